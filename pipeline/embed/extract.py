"""Stage 1: dataset -> backbone embeddings -> store. Batching, prefetch, progress, resume; no CLI here.

    from pipeline.embed.extract import extract
    from pipeline.embed.request import ExtractRequest
    extract(ExtractRequest(dataset="fashion-mnist", backbone="efficientnet_lite0"))
"""
from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.console import progress_bar, stderr
from pipeline.data import Dataset, dataset_slug, load_dataset
from pipeline.data.folder import refuse_output_inside
from pipeline.embed.backbones import Backbone, build_backbone
from pipeline.embed.engines import make_engine, prefetch
from pipeline.embed.int8 import calibration_sample, int8_note
from pipeline.embed.request import ExtractRequest, ExtractResult, already_done, image_shape, store_config, store_meta
from pipeline.embed.sharded import extract_on_dask
from pipeline.errors import PipelineError
from pipeline.store.format import StoreWriter, store_path


def extract(req: ExtractRequest, dataset: Dataset | None = None, backbone: Backbone | None = None,
            progress: bool | None = None, log: Callable[[str], None] = stderr) -> ExtractResult:
    """Embed every image of every split into a store; resumes an interrupted run of the same settings.
    `dataset` and `backbone`, when given, are used instead of reading and building the request's (a caller
    that already has them); with `req.dask`, the cluster's workers extract the rows in shards."""
    import torch

    req.check()
    if req.dataset == "folder":  # before the images are read: a store inside them would become a class
        refuse_output_inside(req.out or store_path(dataset_slug(req.dataset, req.data_dir), req.backbone),
                             req.data_dir)
    if dataset is None:
        dataset = load_dataset(req.dataset, req.data_dir, req.limit, req.folder_split)
    if backbone is None:
        backbone = build_backbone(req.backbone, req.weights, req.layer, req.image_size)
    out = req.out_path(dataset, backbone.name)
    if req.dask:
        return extract_on_dask(req, dataset, backbone, out, progress, log)
    eng = make_engine(backbone, req.device, req.precision, req.engine, req.compile,
                      channels=(image_shape(dataset) or [3])[0],
                      calibration=calibration_sample(dataset) if req.precision == "int8" else None)
    batch_size = eng.default_batch_size() if req.batch_size == "auto" else int(req.batch_size)
    edesc = eng.describe()
    if "int8" in edesc:
        log(int8_note(edesc))
    config = store_config(dataset, backbone, edesc)
    labels = {k: s.labels for k, s in dataset.splits.items()}
    total = sum(map(len, labels.values()))
    with StoreWriter(out, config, labels, backbone.dim, overwrite=req.overwrite, source=dataset.source) as store:
        if already_done(store, total, log):
            return ExtractResult(out, "complete", 0, 0.0)
        done = sum(store.done.values())
        if store.state == "resume":
            log(f"resuming at {done:,}/{total:,} ({out}.partial)")
        t0 = time.perf_counter()
        bar = progress_bar(total, progress=progress, initial=done, unit="img",
                           desc=f"{backbone.name} {edesc['engine']} {edesc['precision']}")
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
