"""`pipeline extract --dask`, side by side in one run on this machine: the same images extracted by one process
and by a one-worker Dask LocalCluster (the worker gets the machine's cores), plus what bounds N workers on paper:
the scheduler's task rate, the driver's per-shard progress record, and the bytes each image moves.

    python benchmarks/bench_dask.py [--data-dir DIR] [--limit 1536] [--shard-rows 512]

EfficientNet-Lite0 at 224 px with its ImageNet weights and the automatic engine (OpenVINO on a CPU).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.embed.extract import extract  # noqa: E402
from pipeline.embed.request import ExtractRequest  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.store import load_features  # noqa: E402
from pipeline.store.format import ShardedStoreWriter  # noqa: E402


def noop(i):
    return i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=1536, help="images per split")
    ap.add_argument("--shard-rows", type=int, default=512)
    a = ap.parse_args()
    import numpy as np
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        req = ExtractRequest(dataset="fashion-mnist", data_dir=a.data_dir, limit=a.limit, backbone="efficientnet_lite0",
                             weights="imagenet")
        quiet = dict(progress=False, log=lambda m: None)
        local = extract(replace(req, out=tmp / "local"), **quiet)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
                Client(c) as client:
            sharded = extract(replace(req, out=tmp / "dask", dask=c.scheduler_address, shard_rows=a.shard_rows),
                              **quiet)
            t = time.perf_counter()
            client.gather(client.map(noop, range(1000), pure=False))
            task_rate = 1000 / (time.perf_counter() - t)
        f, g = load_features(tmp / "local"), load_features(tmp / "dask")
        diff = max(float(np.abs(f.X_train - g.X_train).max()), float(np.abs(f.X_test - g.X_test).max()))
        shards = g.meta["shards"]
        setup = max(s["setup_seconds"] for s in shards)
        steady = sum(s["stop"] - s["start"] for s in shards) / sum(s["seconds"] for s in shards)
        labels = {"train": np.zeros(100_000, np.int64)}
        with ShardedStoreWriter(tmp / "rec", {"bench": 1}, labels, 4) as w:  # the driver's durable record
            t = time.perf_counter()
            for i in range(50):
                w.record({"split": "train", "start": i * 10, "stop": i * 10 + 10})
            record_s = (time.perf_counter() - t) / 50
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    e = g.meta["engine"]
    n = local.images
    print(f"# {cpu_name()}, {os.cpu_count()} cores; EfficientNet-Lite0 224 px, {n:,} Fashion-MNIST images, "
          f"{e['engine']} {e['precision']}; shards of {a.shard_rows}")
    print("| run | img/s | ratio |\n|---|---|---|")
    print(f"| one process (`pipeline extract`) | {local.img_per_s:.1f} | 1.00 |")
    print(f"| one Dask worker, whole run (incl. worker start, model build) | {sharded.img_per_s:.1f} | "
          f"{sharded.img_per_s / local.img_per_s:.2f} |")
    print(f"| one Dask worker, steady state (sum of shard times) | {steady:.1f} | {steady / local.img_per_s:.2f} |")
    print(f"\nlargest |difference| to the one-process store: {diff:.2e}")
    print(f"worker set-up (dataset, backbone, engine), once per worker: {setup:.1f} s")
    print(f"scheduler: {task_rate:,.0f} empty tasks/s round trip from this client; "
          f"driver's durable per-shard record: {record_s * 1e3:.1f} ms")
    dim = g.meta["dim"]
    print(f"bytes written per image: {dim * 4:,} (float32 x {dim}); "
          f"N workers at {steady:.0f} img/s each write {steady * dim * 4 / 1e6:.2f} MB/s per worker")
    per_shard = a.shard_rows / steady
    print(f"a shard takes {per_shard:.1f} s per worker: the scheduler and the driver's record keep up with "
          f"{min(task_rate, 1 / record_s) * per_shard:,.0f} workers before they become the limit")


if __name__ == "__main__":
    main()
