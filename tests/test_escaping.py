"""What a user names (a class folder, a file, a data folder) reaches CSV and Markdown as text, never as a
formula or as markup: spreadsheet cells that would start a formula are neutralised, Markdown is escaped, and the
real names stay in the JSON files."""
from __future__ import annotations

import csv
import json
import re

import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image

from pipeline.results import read_results

HOSTILE = ["=cmd|' -C calc'!A0", "+1+1", "@SUM(1+1)", "-2+3"]  # class folders and file names
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize("text, shown", [("=1+1", "'=1+1"), ("+A1", "'+A1"), ("-A1", "'-A1"), ("@SUM(A1)", "'@SUM(A1)"),
                                         ("\tx", "'\tx"), ("\rx", "'\rx"), ("shirt", "shirt"), ("-0.25", "-0.25"),
                                         ("a=b", "a=b")])
def test_csv_cell_neutralises_formula_triggers(text, shown):
    from pipeline.render.csvfile import cell

    assert cell(text) == shown
    assert cell(-0.25) == -0.25 and cell(3) == 3 and cell(None) == ""


def _hostile_folder(root):
    import numpy as np

    rng = np.random.default_rng(0)
    for c, name in enumerate(HOSTILE[:3]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            a = rng.integers(0, 40, (20, 20), dtype=np.uint8)
            a[3 + 5 * c: 7 + 5 * c] = 230  # a class-specific band
            Image.fromarray(a).save(root / name / f"{HOSTILE[i % 4]}{i}.png")
    return root


def test_user_names_are_neutralised_in_every_csv_and_kept_in_json(tmp_path, runner, monkeypatch):
    data = _hostile_folder(tmp_path / "data")
    out = tmp_path / "rep"
    r = run_cli(runner, "classify", "--features", "raw", "--dataset", "folder", "--data-dir", data, "--raw-size", 8,
                "--classifiers", "lda", "--grid", "quick", "--cv", 2, "--test-fraction", 0.34, "--out", out)
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(data / "+1+1")  # a file named relative to here: its path cell starts with "-"
    r = run_cli(runner, "predict", "--model", out / "models" / "raw_lda.skops", "--out", tmp_path / "p.csv", "--",
                data, "-2+33.png")
    assert r.exit_code == 0, r.output
    cells = []
    for path in (tmp_path / "p.csv", out / "results.csv"):
        with open(path, newline="") as f:
            cells += [c for row in csv.reader(f) for c in row]
    text = [c for c in cells if c and not _number(c)]
    assert text and not [c for c in text if c.startswith(TRIGGERS)], [c for c in text if c.startswith(TRIGGERS)]
    assert "'=cmd|' -C calc'!A0" in cells and "'+1+1" in cells and "'@SUM(1+1)" in cells
    assert "'-2+33.png" in cells
    assert set(read_results(out)[0]["classes"]) == set(HOSTILE[:3])


def _number(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


@pytest.mark.slow
def test_the_data_folders_name_is_escaped_in_the_markdown_title(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's store goes to ./features/
    data = _hostile_folder(tmp_path / "<img src=x onerror=alert(1)>")
    out = tmp_path / "rep"
    r = run_cli(runner, "run", "--dataset", "folder", "--data-dir", data, "--backbone", "resnet18", "--weights",
                "none", "--image-size", 32, "--raw-size", 8, "--classifiers", "lda", "--grid", "quick", "--cv", 2,
                "--methods", "pca", "--test-fraction", 0.34, "--n-jobs", 1, "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    title = (out / "report.md").read_text().splitlines()[0]
    assert title.startswith("# ") and "\\<img src=x onerror=alert(1)\\>" in title
    assert not re.search(r"(?<!\\)[<>]", title), title  # no bracket a renderer would take as HTML
    assert "&lt;img src=x onerror=alert(1)&gt;" in (out / "report.html").read_text()


@pytest.mark.parametrize("edit, says", [
    (lambda g: g["thumbs"].update({k: 'x" onerror="alert(1)' for k in g["thumbs"]}), "not an embedded PNG or JPEG"),
    (lambda g: g["retrieval"][0]["examples"][0].update(label=99), "IndexError"),
    (lambda g: g["galleries"][0].pop("pairs"), "KeyError"),
])
def test_an_edited_galleries_file_never_reaches_the_html(tmp_path, runner, edit, says):
    """galleries.json is read back by the report: a thumbnail that is not an embedded image, or an index out of
    range, is one line, and no report.html is written from it."""
    data = _hostile_folder(tmp_path / "data")
    out = tmp_path / "rep"
    r = run_cli(runner, "classify", "--features", "raw", "--dataset", "folder", "--data-dir", data, "--raw-size", 8,
                "--classifiers", "lda", "--grid", "quick", "--cv", 2, "--test-fraction", 0.34, "--out", out)
    assert r.exit_code == 0, r.output
    g = json.loads((out / "galleries.json").read_text())
    edit(g)
    (out / "galleries.json").write_text(json.dumps(g))
    r = run_cli(runner, "report", "--out", out)
    assert_one_line_error(r, "galleries.json is damaged", says)
    assert not (out / "report.html").exists()
