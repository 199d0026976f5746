"""`pipeline extract --dask`: shards extracted by the workers of a LocalCluster (two worker processes) into one
store, equal to a one-machine run; a worker killed mid-shard, and a driver killed mid-run, lose nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_ARGS, assert_one_line_error, fits_on_cluster, make_idx_dir, run_cli

from pipeline.results import read_results
from pipeline.store import load_features
from pipeline.store.format import ShardedStoreWriter, ShardWriter

pytest.importorskip("distributed")

ARGS = [*FAST_ARGS, "--engine", "torch"]
N_TRAIN, N_TEST = 200, 56


def _cluster(**kw):
    from distributed import LocalCluster

    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", **kw)


@pytest.fixture(scope="module")
def cluster():
    with _cluster() as c:
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("cluster") / "data", n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The same extraction on one machine, without Dask."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("ref") / "store"
    r = run_cli(CliRunner(), "extract", "--data-dir", data, *ARGS, "--out", out)
    assert r.exit_code == 0, r.output
    return load_features(out)


def _assert_same_store(out: Path, reference, shard_rows: int):
    f = load_features(out)
    np.testing.assert_allclose(f.X_train, reference.X_train, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.X_test, reference.X_test, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f.y_train, reference.y_train)
    shards = f.meta["shards"]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):  # the shards tile each split exactly once
        spans = sorted((s["start"], s["stop"]) for s in shards if s["split"] == split)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(b - a <= shard_rows for a, b in spans)
    for s in shards:  # each shard says what ran it, from the worker's own engine
        assert s["engine"]["engine"] == "torch" and s["engine"]["precision"] == "fp32"
        assert s["engine"]["device"] == "cpu" and s["worker"].startswith("tcp://") and s["seconds"] > 0
    assert f.meta["engine"]["engine"] == "torch" and f.meta["device"]["type"] == "cpu"
    return f


def test_dask_store_equals_one_machine_run(cluster, data, reference, tmp_path, runner):
    out = tmp_path / "store"
    r = run_cli(runner, "extract", "--data-dir", data, *ARGS, "--out", out, "--dask", cluster.scheduler_address,
                "--shard-rows", 24)
    assert r.exit_code == 0, r.output
    assert "by 2 workers" in r.stderr
    f = _assert_same_store(out, reference, 24)
    assert len(f.meta["shards"]) == -(-N_TRAIN // 24) + -(-N_TEST // 24)
    assert set(f.meta["cluster"]["workers"]) == set(cluster.scheduler_info["workers"])  # both did work
    assert f.meta["config"]["content_sha256"] == reference.meta["config"]["content_sha256"]
    r = run_cli(runner, "extract", "--data-dir", data, *ARGS, "--out", out, "--dask", cluster.scheduler_address)
    assert r.exit_code == 0 and "nothing to do" in r.stderr


def test_worker_killed_mid_shard_is_replaced_and_store_is_complete(data, reference, tmp_path, runner):
    killed = tmp_path / "killed"
    env = {"PIPELINE_KILL_AT": "extract:shard-batch:2", "PIPELINE_KILL_ONCE": str(killed)}
    with _cluster(env=env) as c:
        out = tmp_path / "store"
        r = run_cli(runner, "extract", "--data-dir", data, *ARGS, "--out", out, "--dask", c.scheduler_address,
                    "--shard-rows", 32)
        assert r.exit_code == 0, r.output
    assert killed.exists()  # a worker really died (SIGKILL in the middle of a shard), and Dask reran its shard
    _assert_same_store(out, reference, 32)


def test_killed_run_resumes_only_the_missing_shards(cluster, data, reference, tmp_path):
    import cli_process

    out = tmp_path / "store"
    # the driver in a process of its own, forked from cli_process's server (its imports made once)
    cmd = ["extract", "--data-dir", data, *ARGS, "--out", out, "--dask", cluster.scheduler_address, "--shard-rows", 16]
    p = cli_process.run(cmd, env={**os.environ, "PIPELINE_KILL_AT": "extract:shard:3"}, timeout=300)
    assert p.returncode == -9, p.stderr  # the driver died (SIGKILL) right after recording its 3rd shard
    progress = json.loads((Path(f"{out}.partial") / "progress.json").read_text())
    assert len(progress["shards"]) == 3 and not out.exists()
    done = sum(s["stop"] - s["start"] for s in progress["shards"])
    # resumed with another shard size: only the rows no recorded shard covers are extracted
    p = cli_process.run(cmd[:-1] + [40], timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resuming at {done:,}/{N_TRAIN + N_TEST}" in p.stderr
    f = _assert_same_store(out, reference, 40)
    assert f.meta["throughput"]["resumed_from"] == done
    assert f.meta["throughput"]["images"] == N_TRAIN + N_TEST - done
    assert all(s in f.meta["shards"] for s in progress["shards"])  # the first run's shards kept as they were


def test_unreachable_scheduler_is_one_line(data, tmp_path, runner, monkeypatch):
    import distributed

    # nothing listens there: each attempt is refused at once and the client retries until its timeout (10 s);
    # one second of retries ends the same way
    real = distributed.Client
    monkeypatch.setattr(distributed, "Client", lambda address, **kw: real(address, **{**kw, "timeout": "1s"}))
    r = run_cli(runner, "extract", "--data-dir", data, *ARGS, "--out", tmp_path / "s", "--dask", "tcp://127.0.0.1:9")
    assert_one_line_error(r, "--dask tcp://127.0.0.1:9", "cannot reach the Dask scheduler")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_missing_rows_are_cut_into_shards_around_finished_ones(tmp_path):
    labels = {"train": np.zeros(10, np.int64), "test": np.zeros(3, np.int64)}
    with ShardedStoreWriter(tmp_path / "s", {"k": 1}, labels, 4) as w:
        assert w.missing(4) == [("train", 0, 4), ("train", 4, 8), ("train", 8, 10), ("test", 0, 3)]
        w.record({"split": "train", "start": 2, "stop": 5})
        w.record({"split": "test", "start": 0, "stop": 3})
        assert w.missing(4) == [("train", 0, 2), ("train", 5, 9), ("train", 9, 10)]
    with ShardedStoreWriter(tmp_path / "s", {"k": 1}, labels, 4) as w:  # resumed from progress.json
        assert w.state == "resume" and w.done == {"train": 3, "test": 3}
        assert w.missing(100) == [("train", 0, 2), ("train", 5, 10)]


def test_worker_without_the_shared_store_says_so(tmp_path):
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="filesystem every worker shares"):
        ShardWriter(tmp_path / "elsewhere.partial", "train", 0, 8, 4)


@pytest.mark.slow
def test_run_with_dask_extracts_in_shards_and_searches_on_the_cluster(cluster, data, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = fits_on_cluster(cluster)
    r = run_cli(runner, "run", "--data-dir", data, "--backbone", "resnet18", "--weights", "none", "--image-size", 64,
                "--grid", "quick", "--classifiers", "lda,logreg", "--methods", "pca", "--dask",
                cluster.scheduler_address)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "reports" / "fashion-mnist-64px" / "run.json").read_text())
    assert info["dask"] == cluster.scheduler_address
    meta = load_features(tmp_path / info["stores"][0]).meta
    assert {s["worker"] for s in meta["shards"]} <= set(cluster.scheduler_info["workers"])
    results = read_results(tmp_path / "reports" / "fashion-mnist-64px")
    assert {(r["feature_set"], r["classifier"]) for r in results} >= {("raw", "lda"), ("resnet18", "logreg")}
    assert fits_on_cluster(cluster) > before  # the grid search's fits ran on the cluster's workers
