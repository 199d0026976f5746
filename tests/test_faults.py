"""Fault injection: `pipeline run` killed (SIGKILL, as by a power cut or the OOM killer) at points inside
every stage, then run again, must finish, say what it resumed or skipped, and end with the same outputs as
a run that was never interrupted: features bit-identical, the same records, the same maps, a full report.

`PIPELINE_KILL_AT=<point>[:<n>]` (pipeline/faults.py) makes the process kill itself the n-th time it passes
that point: after a store commit, after a classifier's record, after a map, between the report's two files,
and inside `atomic_write` between its temporary file and the rename. (A store killed while moving into
place: tests/test_store.py, test_killed_while_moving_the_store_into_place.)
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cli_process
import numpy as np
import pytest
from helpers import make_idx_dir

from pipeline import load_features

pytestmark = pytest.mark.slow  # 13 whole `pipeline run`s

TIMING = {"fit_seconds", "predict_seconds", "search_seconds"}


def args(data, weights, methods="pca"):
    return ["run", "--data-dir", data, "--backbone", "resnet18", "--weights", weights, "--image-size", 48,
            "--limit", 60, "--grid", "quick", "--classifiers", "lda,logreg", "--methods", methods, "--n-jobs", 1,
            "--device", "cpu"]  # bit-identical reruns: the CPU path (cuDNN picks its kernels per process)


def run(tmp, data, weights, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_KILL_AT"}
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    return cli_process.run(args(data, weights), cwd=tmp, env=env)


def outputs(tmp: Path) -> dict:
    out = tmp / "reports" / "fashion-mnist-first60-48px"
    store = load_features(tmp / "features" / "fashion-mnist" / "resnet18-first60-48px")
    records = sorted(({k: v for k, v in r.items() if k not in TIMING}
                      for r in json.loads((out / "results.json").read_text())),
                     key=lambda r: (r["feature_set"], r["classifier"]))
    maps = {p.name: np.load(p) for p in sorted((out / "maps").glob("*.npy"))}
    return {"out": out, "X": (np.asarray(store.X_train), np.asarray(store.X_test)), "records": records,
            "maps": maps, "csv": (out / "results.csv").read_text().splitlines()[0],
            "galleries": json.loads((out / "galleries.json").read_text()),
            "audit": {k: v for k, v in json.loads((out / "audit.json").read_text()).items()
                      if k not in ("created", "seconds")}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, resnet18_file):
    tmp = tmp_path_factory.mktemp("reference")
    data = make_idx_dir(tmp / "data", n_train=70, n_test=30)
    r = run(tmp, data, resnet18_file)
    assert r.returncode == 0, r.stderr
    return data, outputs(tmp)


@pytest.mark.parametrize("point, says", [
    ("extract:commit:1", "resuming at 60/90"),  # mid-extraction: the train split committed
    ("classify:record:1", "3 of 4"),  # after the first of four records (raw lda): 3 left to fit
    ("curve:point:1", " points"),  # after the label curve's first point: the others fitted, the same records
    ("project:map:1", "1 of 2 maps computed"),  # after raw pixels' PCA map
    ("report:write:1", "report"),              # report.html written, report.md not yet
    ("atomic_write:9", ""),  # the first record's derived files in a temporary file (results.json written)
    ("atomic_write:12", "3 of 4"),  # inside the second record's files: refitted, its temporary file swept
])
def test_killed_anywhere_then_rerun_gives_the_same_outputs(tmp_path, reference, resnet18_file, point, says):
    data, ref = reference
    killed = run(tmp_path, data, resnet18_file, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
    again = run(tmp_path, data, resnet18_file)
    assert again.returncode == 0, again.stderr[-3000:]
    assert says in again.stderr + again.stdout, again.stderr[-3000:]  # a log line, or the stage table's
    got = outputs(tmp_path)
    for a, b in zip(got["X"], ref["X"]):
        np.testing.assert_array_equal(a, b)  # bit-identical features
    assert got["records"] == ref["records"]
    assert got["maps"].keys() == ref["maps"].keys()
    for name in ref["maps"]:
        np.testing.assert_allclose(got["maps"][name], ref["maps"][name], rtol=1e-5, atol=1e-5)
    assert got["csv"] == ref["csv"] and (got["out"] / "results.md").exists()
    assert got["galleries"] == ref["galleries"] and got["audit"] == ref["audit"]
    for name in ("report.html", "report.md"):
        assert (got["out"] / name).stat().st_size > 1000
    leftovers = [p.name for d in (got["out"], tmp_path / "features") for p in d.rglob("*") if ".tmp" in p.name]
    assert leftovers == [], leftovers
    stages = json.loads((got["out"] / "run.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["extract", "classify", "curve", "galleries", "audit", "project",
                                               "maps.html", "report"]


def test_ctrl_c_during_tsne_after_the_audit_exits_130(tmp_path, reference, resnet18_file):
    """Issue 42 row 10: Ctrl-C while t-SNE maps, after the audit had embedded its grey and colour images with
    OpenVINO in the same process, was a segfault (rc -11): OpenVINO left the main thread a signal stack in
    freed memory, where Python's SIGINT handler then ran. It must stop as every stage does: exit 130, one line."""
    data, _ = reference
    p = cli_process.start(args(data, resnet18_file, methods="tsne,umap"), cwd=tmp_path)
    deadline = time.monotonic() + 240
    while "tsne  mapping" not in p.stderr_so_far() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "audit: " in p.stderr_so_far(), p.stderr_so_far()[-2000:]  # the audit ran first, in this process
    for _ in range(40):  # as a user does: Ctrl-C again if the first one landed where compiled code dropped it
        os.kill(p.pid, signal.SIGINT)
        if p.exited(0.5):
            break
    r = p.wait()
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert r.stderr.rstrip().endswith("interrupted; run the same command again to resume"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
