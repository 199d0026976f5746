"""The feature store on disk: the user's own folders beside it, short writes and a full disk, damaged files,
a kill while the finished store moves into place. One clear line or correct behaviour, nothing lost."""
from __future__ import annotations

import errno
import json

import cli_process
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

