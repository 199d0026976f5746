"""Stage 1 on a Dask cluster (`pipeline extract --dask ADDRESS`): the store's rows cut into shards, each
extracted by a worker on its own hardware with the same engine rules as one machine (`make_engine`), and
written in place into one store on a filesystem every worker shares.

    driver (holds the store's lock)                     workers (each caches dataset, backbone, engine)
    ShardedStoreWriter: <out>.partial, preallocated ─►  run_shard(job, split, start, stop):
    missing shards ──────────── client.map ──────────►    decode → engine.map → ShardWriter (pwrite, fsync)
    record(shard) → progress.json  ◄── as_completed ───   {worker, device, engine, seconds}
    finalize: meta.json lists every shard, rename into place

A lost worker's shard is rerun by Dask on another worker; a killed run, rerun, extracts only the rows no
recorded shard covers. The finished store is the format `load_features` reads, equal to a one-machine run's
within the engines' precision.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pipeline.console import progress_bar
from pipeline.data import load_dataset
from pipeline.embed.backbones import build_backbone
from pipeline.embed.engines import make_engine, prefetch
from pipeline.embed.int8 import calibration_sample
from pipeline.embed.request import ExtractRequest, ExtractResult, already_done, image_shape, store_config, store_meta
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.hardware import cores, dask_client
from pipeline.store.format import ShardedStoreWriter, ShardWriter

_WORKER: dict = {}  # this worker process's dataset, backbone and engine, built once per job


def _worker_state(job: ExtractRequest, fingerprint: dict):
    if _WORKER.get("job") == job:
        return _WORKER["state"]
    _WORKER.clear()  # one job at a time: drop the last one's model and images
    import torch

    threads = max(1, cores() // max(1, _worker_threads()))
    torch.set_num_threads(threads)  # the worker's cores shared by the tasks it runs at once
    ds = load_dataset(job.dataset, job.data_dir, job.limit, job.test_fraction)
    seen = _fingerprint(ds, None)
    if seen["splits"] != fingerprint["splits"]:
        raise PipelineError(f"worker {_worker_name()} sees another {job.dataset} in {job.data_dir} than the driver "
                            f"(rows or labels differ): every worker must see the same files")
    bb = build_backbone(job.backbone, job.weights, job.layer, job.image_size)
    if bb.weights.get("sha256") != fingerprint["weights_sha256"]:
        raise PipelineError(f"worker {_worker_name()} loaded other weights for {job.backbone} ({job.weights}) "
                            f"than the driver: every worker must see the same weights file")
    eng = make_engine(bb, job.device, job.precision, job.engine, job.compile, channels=(image_shape(ds) or [3])[0],
                      calibration=calibration_sample(ds) if job.precision == "int8" else None)
    batch = eng.default_batch_size() if job.batch_size == "auto" else int(job.batch_size)
    _WORKER.update(job=job, state=(ds, eng, batch, threads))
    return _WORKER["state"]


def _fingerprint(dataset, backbone) -> dict:
    """What driver and workers must agree on: each split's rows and labels (cheap: no image is read), and the
    weights' sha256."""
    return {"splits": {k: [len(s), s.labels_hash()] for k, s in dataset.splits.items()},
            "weights_sha256": backbone.weights.get("sha256") if backbone is not None else None}


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return 1


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return socket.gethostname()


def run_shard(job: ExtractRequest, fingerprint: dict, partial: str, dim: int, split: str, start: int,
              stop: int) -> dict:
    """On a worker: extract rows [start, stop) of a split into the store's partial files; what ran, measured."""
    import torch

    t0 = time.perf_counter()
    ds, eng, batch, threads = _worker_state(job, fingerprint)
    setup, t0 = time.perf_counter() - t0, time.perf_counter()
    w = ShardWriter(partial, split, start, stop, dim)
    ok = False
    try:
        sp = ds.splits[split]
        batches = prefetch(sp.batch(a, min(a + batch, stop)) for a in range(start, stop, batch))
        for feats in eng.map(batches):
            w.write(feats)
            fault_point("extract:shard-batch")
        ok = True
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise PipelineError(f"out of memory on worker {_worker_name()} at batch size {batch} "
                            f"({str(e).splitlines()[0][:80]}); rerun with a smaller --batch-size: the store "
                            f"resumes") from None
    finally:
        w.close() if ok else w.abort()
    seconds = time.perf_counter() - t0
    return {"split": split, "start": start, "stop": stop, "worker": _worker_name(), "host": socket.gethostname(),
            "threads": threads, "batch_size": batch, "engine": eng.describe(), "setup_seconds": round(setup, 3),
            "seconds": round(seconds, 3),
            "img_per_s": round((stop - start) / seconds, 1) if seconds else None}


def extract_on_dask(req: ExtractRequest, dataset, backbone, out: Path, progress: bool | None,
                    log: Callable[[str], None]) -> ExtractResult:
    """The driver: open (or resume) a sharded store, have the cluster extract its missing shards, finish it."""
    address, shard_rows, job = req.dask, req.shard_rows, req.for_workers(dataset, backbone.image_size)
    request = {"engine": job.engine, "precision": job.precision, "device": job.device}
    config = {**store_config(dataset, backbone, request), "placement": "dask shards (each worker's engine choice)"}
    labels = {k: s.labels for k, s in dataset.splits.items()}
    total = sum(map(len, labels.values()))
    client = dask_client(address)
    try:
        with ShardedStoreWriter(out, config, labels, backbone.dim, overwrite=req.overwrite,
                                source=dataset.source) as store:
            if already_done(store, total, log):
                return ExtractResult(out, "complete", 0, 0.0)
            todo = store.missing(shard_rows)
            done = sum(store.done.values())
            workers = len(client.scheduler_info().get("workers", {}))
            log(f"{'resuming at' if store.state == 'resume' else 'extracting'} {done:,}/{total:,} on the Dask "
                f"cluster at {address} ({workers} worker{'s' * (workers != 1)} now): {len(todo)} shards of at "
                f"most {shard_rows:,} images to go")
            fp = _fingerprint(dataset, backbone)
            partial = os.path.abspath(store.partial)
            t0 = time.perf_counter()
            _run_shards(client, store, todo, (job, fp, partial, backbone.dim), total,
                        progress_bar(total, progress=progress, initial=done, unit="img",
                                     desc=f"{backbone.name} on dask"))
            seconds = time.perf_counter() - t0
            computed = total - done
            meta = store_meta(dataset, backbone, _summary(store.shards), job.batch_size, computed, seconds, done)
            meta["cluster"] = {"scheduler": address, "shard_rows": shard_rows, "job": asdict(job),
                               "workers": sorted({s["worker"] for s in store.shards})}
            meta["shards"] = sorted(store.shards, key=lambda s: (list(labels).index(s["split"]), s["start"]))
            store.finalize(meta)
    finally:
        client.close()
    e = meta["engine"]
    log(f"stored {total:,} x {backbone.dim} features in {out} ({computed:,} computed in {seconds:.1f} s, "
        f"{computed / seconds if seconds else 0:.0f} img/s by {len(meta['cluster']['workers'])} workers: "
        f"{e['engine']} {e['precision']} on {e['device_name']})")
    return ExtractResult(out, store.state, computed, seconds)


def _run_shards(client, store: ShardedStoreWriter, todo: list, args: tuple, total: int, bar) -> None:
    """Submit the shards, record each as it finishes (in any order); any failure stops the run, keeping every
    recorded shard for the rerun."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    futures = {client.submit(run_shard, *args, s, a, b, pure=False, key=f"pipeline-shard-{s}-{a}-{b}-{os.getpid()}"):
               (s, a, b) for s, a, b in todo}
    try:
        with bar:
            for fut in as_completed(futures):
                s, a, b = futures[fut]
                try:
                    rec = fut.result()
                except PipelineError as e:
                    raise PipelineError(f"shard {s} rows {a}..{b}: {e}") from None
                except KilledWorker:
                    raise PipelineError(f"shard {s} rows {a}..{b} was running on every worker that died (out of "
                                        f"memory?); the finished shards are kept: rerun the same command to resume "
                                        f"({sum(store.done.values()):,}/{total:,} images stored)") from None
                except (OSError, FutureCancelledError) as e:
                    raise PipelineError(f"lost the Dask cluster ({type(e).__name__}: {e}); the finished shards are "
                                        f"kept: rerun the same command to resume") from None
                except Exception as e:  # noqa: BLE001 - a worker's own failure, reported as one line
                    raise PipelineError(f"shard {s} rows {a}..{b} failed on the cluster ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0] if str(e) else ''}); rerun the same command to "
                                        f"resume") from None
                store.record(rec)
                bar.update(b - a)
    finally:
        client.cancel(list(futures))


def _summary(shards: list[dict]) -> dict:
    """The store's engine description: the shards' own when they all ran the same way, else 'mixed' (each
    shard's is in meta's shards)."""
    descs = {repr(sorted(s["engine"].items())): s["engine"] for s in shards}
    if len(descs) == 1:
        return next(iter(descs.values()))
    def common(k):
        vals = sorted({str(d.get(k)) for d in descs.values()})
        return vals[0] if len(vals) == 1 else "mixed"
    return {"engine": common("engine"), "precision": common("precision"), "device": common("device"),
            "device_name": "; ".join(sorted({str(d.get("device_name")) for d in descs.values()})),
            "per_shard": "meta.json's shards name each shard's engine"}
