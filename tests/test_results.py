"""The results files of an --out folder: a damaged or foreign results.json stops before any fit."""
from __future__ import annotations

import pytest
from helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("content", ["[{\"feature_set\": \"raw\",", '{"records": []}', '[{"feature_set": 3}]'])
def test_damaged_or_foreign_results_file_stops_before_any_fit(tmp_path, runner, blob_store, content, monkeypatch):
    from pipeline.classical import search

    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text(content)
    searched, real = [], search._classify
    monkeypatch.setattr(search, "_classify", lambda run: searched.append(run) or real(run))  # the fits
    r = run_cli(runner, "classify", "--features", blob_store, "--classifiers", "rf,svc,knn", "--out", out)
    assert_one_line_error(r, "results.json", "move it away or choose another --out")
    assert searched == []  # refused up front, not after the fits
    assert (out / "results.json").read_text() == content and not (out / "confusion").exists()
    assert_one_line_error(run_cli(runner, "report", "--out", out), "results.json")



@pytest.mark.parametrize("name", ["results.csv", "results.md"])
def test_a_users_own_results_table_is_never_replaced(tmp_path, runner, blob_store, name):
    """A results.csv / results.md in a folder without results.json is not pipeline's: every command that would
    rewrite it refuses up front, and it stays as it was."""
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text("my own numbers\n")
    for args in (["classify", "--features", blob_store, "--classifiers", "lda", "--cv", 2],
                 ["train", "--features", blob_store, "--epochs", 1]):
        r = run_cli(runner, *args, "--out", out)
        assert_one_line_error(r, f"holds {name} but no results.json", "will not replace")
    assert (out / name).read_text() == "my own numbers\n" and not (out / "results.json").exists()
