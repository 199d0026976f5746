"""The feature store on disk: the user's own folders beside it, short writes and a full disk, damaged files,
a kill while the finished store moves into place. One clear line or correct behaviour, nothing lost."""
from __future__ import annotations

import errno
import json

import cli_process
import numpy as np
import pytest
from helpers import EXTRACT, FAST, assert_one_line_error, blobs, fast_args, run_cli, same_features, write_store

from pipeline import load_features
from pipeline.embed.extract import extract
from pipeline.embed.request import ExtractRequest
from pipeline.errors import PipelineError


def test_users_partial_folder_is_refused_never_deleted(data, tmp_path, runner):
    out = tmp_path / "store"
    mine = tmp_path / "store.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "store.partial exists and was not made by pipeline", "choose another --out")
    assert (mine / "notes.txt").read_text() == "mine" and not out.exists()


def test_users_old_folder_survives_overwrite_and_plain_extract(data, tmp_path, runner, reference):
    out = tmp_path / "store"
    mine = tmp_path / "store.old"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    out.mkdir()  # an empty folder to extract into (a plain extract replaces it)
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    r = run_cli(runner, "extract", *fast_args(image_size=32, precision=None, batch_size=None), "--data-dir", data,
                "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert load_features(out).meta["image_size"] == 32
    assert (mine / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".store")) == [".store.lock"]


def test_short_writes_are_completed_not_committed_half(data, tmp_path, monkeypatch, reference):
    import os

    real = os.pwrite

    def short(fd, buf, offset):  # the kernel may write less than asked: a full disk, a signal
        return real(fd, bytes(buf)[: max(1, len(buf) // 3)], offset)

    monkeypatch.setattr(os, "pwrite", short)
    res = extract(ExtractRequest(dataset="fashion-mnist", backbone="resnet18", data_dir=data, out=tmp_path / "s",
                                **FAST), progress=False)
    same_features(load_features(res.path), reference)


def test_disk_full_is_one_line_and_leaves_a_resumable_store(data, tmp_path, monkeypatch, runner, reference):
    import os

    real, calls = os.pwrite, []

    def full_after_two(fd, buf, offset):
        calls.append(len(buf))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buf, offset)

    out = tmp_path / "s"
    monkeypatch.setattr(os, "pwrite", full_after_two)
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "No space left on device (disk full)", "run the same command again to resume")
    assert not out.exists()
    done = json.loads((tmp_path / "s.partial" / "progress.json").read_text())["done"]
    assert done["train"] == 16  # the two batches that reached the disk, and not one row more
    monkeypatch.setattr(os, "pwrite", real)
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert r.exit_code == 0 and "resuming at 16/56" in r.stderr
    same_features(load_features(out), reference)


def test_damaged_progress_starts_over_and_damaged_meta_is_one_line(data, tmp_path, runner, reference):
    out = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    (out / "meta.json").write_text("{not json")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "s/meta.json is damaged", "--overwrite")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    same_features(load_features(out), reference)

    other = tmp_path / "t"  # an unfinished store whose progress.json is garbage, or JSON of another shape
    for bad in ("\x00\x01garbage", "[1, 2]", '{"config_hash": 5, "done": "all"}'):
        with pytest.raises(SystemExit):  # kill it mid-way: a partial store of ours
            _partial(data, other)
        (tmp_path / "t.partial" / "progress.json").write_text(bad)
        r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", other)
        assert r.exit_code == 0, r.output
        assert "progress.json was damaged; starting this extraction over" in r.stderr
        same_features(load_features(other), reference)
        import shutil

        shutil.rmtree(other)


def _partial(data, out):
    """Leave an unfinished store of ours at out.partial (as a crash would)."""
    from pipeline.embed import engines

    real = engines.TorchEngine.map

    def crash_after_one(self, batches):
        for i, f in enumerate(real(self, batches)):
            if i == 1:
                raise SystemExit(1)
            yield f

    engines.TorchEngine.map = crash_after_one
    try:
        extract(ExtractRequest(dataset="fashion-mnist", backbone="resnet18", data_dir=data, out=out, **FAST),
            progress=False)
    finally:
        engines.TorchEngine.map = real


def test_load_features_on_damaged_meta(tmp_path):
    s = write_store(tmp_path / "s", *blobs(20), *blobs(10, seed=1))
    for bad in ("[]", '{"rows": 3}', "{"):
        (s / "meta.json").write_text(bad)
        with pytest.raises(PipelineError, match="damaged feature store"):
            load_features(s)


def _cli(args, env=None):
    import os

    return cli_process.run(args, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("point", ["extract:finalize", "extract:replace"])
def test_killed_while_moving_the_store_into_place(data, tmp_path, reference, point):
    """Killed after the finished store's meta.json is written (and, with --overwrite, after the old store
    was moved aside): the same command finishes the move; nothing is extracted again, nothing is lost."""
    out = tmp_path / "s"
    args = [*EXTRACT, "--data-dir", data, "--out", out]
    if point == "extract:replace":
        smaller = ["extract", *fast_args(image_size=32, precision=None, batch_size=None)]
        assert _cli([*smaller, "--data-dir", data, "--out", out]).returncode == 0
        args.append("--overwrite")
    r = _cli(args, {"PIPELINE_KILL_AT": point})
    assert r.returncode == -9, r.stderr[-1500:]
    r = _cli(args)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "finished the move into place" in r.stderr
    same_features(load_features(out), reference)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".s", "s"))) == [".s.lock", "s"]
    assert sorted(p.name for p in out.iterdir()) == ["X_test.npy", "X_train.npy", "meta.json", "y_test.npy",
                                                     "y_train.npy"]



# --- a finished store checked on open (issue: damaged stores that claim to be finished) -----------------------

@pytest.mark.parametrize("damage", ["truncate X_train", "delete y_test", "delete X_test"])
def test_damaged_finished_store_is_said_and_the_same_command_reextracts_it(data, tmp_path, runner, reference,
                                                                           damage):
    out = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    how, name = damage.split()
    f = out / f"{name}.npy"
    if how == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size - 100)
    else:
        f.unlink()
    with pytest.raises(PipelineError, match=f"damaged feature store \\({name}.npy is "
                                            f"{'truncated' if how == 'truncate' else 'missing'}"):
        load_features(out)
    r = run_cli(runner, "classify", "--features", out, "--data-dir", data, "--out", tmp_path / "rep")
    assert_one_line_error(r, f"{name}.npy is", "run the `pipeline extract` that made it again")
    for extra in ([], ["--overwrite"]):  # the same command repairs it; so does --overwrite (then: nothing to do)
        r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out, *extra)
        assert r.exit_code == 0, r.output
        same_features(load_features(out), reference)
    assert "re-extracting" not in r.stderr and "nothing to do" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".s", "s"))) == [".s.lock", "s"]


def test_a_damaged_store_keeps_its_intact_features(data, tmp_path, runner, reference, monkeypatch):
    """Only what is missing is extracted again: with the test split's features damaged, the training rows
    are copied from the damaged store, not recomputed."""
    out = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    (out / "X_test.npy").unlink()
    from pipeline.embed import engines

    real, seen = engines.TorchEngine.map, []

    def counting(self, batches):
        for f in real(self, batches):
            seen.append(len(f))
            yield f

    monkeypatch.setattr(engines.TorchEngine, "map", counting)
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert r.exit_code == 0, r.output
    assert "keeping X_train.npy" in r.stderr and sum(seen) == 16  # the 16 test images, none of the 40 training
    same_features(load_features(out), reference)


def test_labels_are_checked_against_meta_on_load(tmp_path, runner):
    X, y = blobs(48)
    s = write_store(tmp_path / "s", X, y, *blobs(24, seed=1))
    changed = y.copy()
    changed[:6] = (changed[:6] + 1) % 10  # 6 of 48 labels now name another class
    np.save(s / "y_train.npy", changed)
    r = run_cli(runner, "classify", "--features", s, "--classifiers", "lda", "--grid", "quick", "--cv", "2",
                "--out", tmp_path / "rep")
    assert_one_line_error(r, "y_train.npy: the labels are not the ones this store was made with")
    outside = y.copy()
    outside[3] = 10  # not a class of the ten
    np.save(s / "y_train.npy", outside)
    for args in (["classify", "--features", s, "--classifiers", "lda", "--cv", "2"],
                 ["project", "--features", s, "--methods", "pca"], ["train", "--features", s, "--epochs", "1"]):
        r = run_cli(runner, *args, "--out", tmp_path / "rep2")
        assert_one_line_error(r, "y_train.npy: label 10 at row 3 is not a class (meta.json has 10)")
    assert not (tmp_path / "rep2" / "results.json").exists()


def test_symlinked_out_puts_the_store_where_the_link_points(data, tmp_path, runner, reference):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "outlink"
    link.symlink_to(target)
    for _ in range(2):  # the rerun finds the finished store: nothing to do, nothing left behind
        r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", link)
        assert r.exit_code == 0, r.output
    assert "nothing to do" in r.stderr
    assert link.is_symlink() and (target / "meta.json").is_file()
    same_features(load_features(link), reference)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("data", "ref", ".ref.lock"))
    assert left == [".real.lock", "outlink", "real"]


def test_a_foreign_meta_json_is_never_replaced(data, tmp_path, runner):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "meta.json").write_text('{"title": "my photos", "year": 2024}')
    for extra in ([], ["--overwrite"]):
        r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out, *extra)
        assert_one_line_error(r, "holds a meta.json that is not a feature store's", "choose another --out")
        assert "--overwrite" not in r.stderr
    assert (out / "meta.json").read_text() == '{"title": "my photos", "year": 2024}'


@pytest.mark.parametrize("change, says", [
    (lambda m: m["dataset"].pop("classes"), "dataset.classes is missing"),
    (lambda m: m["dataset"].update(classes=None), "dataset.classes must be array (is null)"),
    (lambda m: m["dataset"].update(classes=list(range(10))), "must be string (is "),
    (lambda m: m.update(backbone="resnet18"), "backbone must be object"),
    (lambda m: m["dataset"].update(source=5), "dataset.source must be string or null (is 5)"),
    (lambda m: m["dataset"].update(split="oops"), "dataset.split must be object or null"),
    (lambda m: m.update(rows={}), "rows must not be empty"),
])
def test_a_meta_json_of_the_wrong_types_is_one_line(tmp_path, runner, change, says):
    """Issue 42 row 12: valid JSON with wrong types gave tracebacks in export and classify. meta.json is
    checked against a schema on load, as model cards and run.json are."""
    s = write_store(tmp_path / "s", *blobs(40), *blobs(20, seed=1))
    meta = json.loads((s / "meta.json").read_text())
    change(meta)
    (s / "meta.json").write_text(json.dumps(meta))
    for args in (["export", "--features", s, "--to", "csv", "--out", tmp_path / "t.csv"],
                 ["classify", "--features", s, "--classifiers", "lda", "--out", tmp_path / "o"]):
        r = run_cli(runner, *args)
        assert_one_line_error(r, f"{s}/meta.json: ", says, "re-extract the store with --overwrite")
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "o").exists()
