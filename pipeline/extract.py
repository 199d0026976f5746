"""Stage 1: dataset -> backbone embeddings -> store. Batching, prefetch, progress, resume; no CLI here."""
from __future__ import annotations

import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.backbones import Backbone, build_backbone
from pipeline.datasets import Dataset, load_dataset
from pipeline.engines import make_engine
from pipeline.errors import PipelineError
from pipeline.store import StoreWriter

FEATURES_ROOT = Path("features")


@dataclass
class ExtractResult:
    path: Path
    state: str  # "new", "resume" or "complete" (nothing to do)
    images: int  # images computed by this call
    seconds: float

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def default_out(dataset: str, backbone: str) -> Path:
    from pipeline.store import store_dirname

    return FEATURES_ROOT / dataset / store_dirname(backbone)


def prefetch(it: Iterable, depth: int = 2) -> Iterator:
    """Produce items in a background thread (decoding, pinning) while the consumer computes."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def extract(dataset: Dataset | str, backbone: Backbone | str = "resnet18", *, data_dir=None, limit=None,
            test_fraction: float | None = 0.2,
            weights: str = "imagenet", layer: str | None = None, image_size: int = 224, device: str = "auto",
            precision: str = "auto", engine: str = "auto", compile: bool = False, batch_size: int | str = "auto",
            out=None, overwrite: bool = False, progress: bool | None = None, dask: str | None = None,
            shard_rows: int = 2048,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> ExtractResult:
    """Embed every image of every split into a store; resumes an interrupted run of the same settings.
    `dask`: a scheduler address; the rows are then cut into shards of `shard_rows` that the cluster's workers
    extract (see pipeline.cluster)."""
    import torch
    from tqdm.auto import tqdm

    if batch_size != "auto" and not (str(batch_size).isdigit() and int(batch_size) >= 1):
        raise PipelineError(f"--batch-size must be auto or a positive number of images, not {batch_size}")
    if shard_rows < 1:
        raise PipelineError(f"--shard-rows must be a positive number of images, not {shard_rows}")
    name = dataset if isinstance(dataset, str) else dataset.name
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, data_dir, limit, test_fraction if dataset == "folder" else None)
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, weights, layer, image_size)
    out = Path(out) if out is not None else default_out(dataset.slug, backbone.name)
    if dask:
        from pipeline.cluster import ExtractJob, extract_on_dask

        job = ExtractJob(name, dataset.source, limit, test_fraction if name == "folder" else None, backbone.name,
                         weights, layer, backbone.image_size, device, precision, engine, compile,
                         batch_size)
        return extract_on_dask(dask, job, dataset, backbone, out, overwrite, shard_rows, progress, log)
    eng = make_engine(backbone, device, precision, engine, compile, channels=(_image_shape(dataset) or [3])[0])
    batch_size = eng.default_batch_size() if batch_size == "auto" else int(batch_size)
    edesc = eng.describe()
    config = store_config(dataset, backbone, edesc)
    labels = {k: s.labels for k, s in dataset.splits.items()}
    total = sum(map(len, labels.values()))
    with StoreWriter(out, config, labels, backbone.dim, overwrite=overwrite) as store:
        if already_done(store, total, log):
            return ExtractResult(out, "complete", 0, 0.0)
        done = sum(store.done.values())
        if store.state == "resume":
            log(f"resuming at {done:,}/{total:,} ({out}.partial)")
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=done, unit="img", desc=f"{backbone.name} {edesc['engine']} "
                   f"{edesc['precision']}", disable=(not progress) if progress is not None else None,
                   file=sys.stderr, dynamic_ncols=True)
        with bar:
            for name, split in dataset.splits.items():
                starts = list(range(store.done[name], len(split), batch_size))
                batches = prefetch(split.batch(a, min(a + batch_size, len(split))) for a in starts)
                try:
                    for a, feats in zip(starts, eng.map(batches)):
                        store.write(name, a, feats)
                        bar.update(len(feats))
                except (MemoryError, torch.OutOfMemoryError) as e:
                    raise PipelineError(f"out of memory at batch size {batch_size} ({str(e).splitlines()[0][:80]}); "
                                        f"run again with a smaller --batch-size: the store resumes") from None
        seconds = time.perf_counter() - t0
        computed = total - done
        meta = store_meta(dataset, backbone, edesc, batch_size, computed, seconds, done)
        store.finalize(meta)
    rate = computed / seconds if seconds else 0.0
    log(f"stored {total:,} x {backbone.dim} features in {out} ({computed:,} computed in {seconds:.1f} s, "
        f"{rate:.0f} img/s, {edesc['engine']} {edesc['precision']} on {edesc['device_name']})")
    return ExtractResult(out, store.state, computed, seconds)


def already_done(store: StoreWriter, total: int, log: Callable[[str], None]) -> bool:
    """After opening a store: say what opening it did, and whether it already holds these features."""
    if store.note:
        log(store.note)
    if store.state == "complete":
        log(f"{store.out}: already extracted with these settings ({total:,} images); nothing to do")
    return store.state == "complete"


def store_config(dataset: Dataset, backbone: Backbone, edesc: dict) -> dict:
    """What makes two stores the same: their config hash decides resume, skip, or refuse."""
    return {
        "dataset": dataset.name, "content_sha256": dataset.content_hash,
        "rows": {k: len(s) for k, s in dataset.splits.items()},
        "backbone": backbone.name, "weights_sha256": backbone.weights.get("sha256"),
        "weights_id": backbone.weights.get("id"), "layer": backbone.layer, "image_size": backbone.image_size,
        "preprocessing": backbone.describe_preprocessing(), "engine": edesc["engine"],
        "precision": edesc["precision"], "device": edesc["device"],
    }


def store_meta(dataset: Dataset, backbone: Backbone, edesc: dict, batch_size: int | str, computed: int,
               seconds: float, resumed_from: int) -> dict:
    """meta.json: how the store was made, from what ran (edesc: the engine's own description)."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["pipeline"] + sys.argv[1:]) if Path(sys.argv[0]).name == "pipeline" else None,
        "dataset": {**dataset.describe(), "image_shape": _image_shape(dataset) or "varied (image folder)"},
        "backbone": {"name": backbone.name, "weights": backbone.weights, "layer": backbone.layer,
                     "feature_dim": backbone.dim},
        "image_size": backbone.image_size,
        "preprocessing": backbone.describe_preprocessing(),
        "precision": edesc["precision"],
        "engine": edesc,
        "device": {"type": edesc["device"], "name": edesc["device_name"]},
        "batch_size": batch_size,
        "throughput": {"images": computed, "seconds": round(seconds, 2),
                       "img_per_s": round(computed / seconds, 1) if seconds else None,
                       "resumed_from": resumed_from or None},
        "versions": _versions(),
    }


def _image_shape(ds: Dataset) -> list[int] | None:
    """(C, H, W) of an array dataset; None for image folders (sizes and channels vary)."""
    for s in ds.splits.values():
        if s.images is not None:
            return [int(d) for d in s.images.shape[1:]]
    return None


def _versions() -> dict:
    import torch
    import torchvision

    v = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
         "torchvision": torchvision.__version__}
    try:
        import openvino

        v["openvino"] = openvino.__version__
    except ImportError:
        pass
    from pipeline import __version__

    v["pipeline"] = __version__
    return v
