"""int8 extraction: NNCF post-training quantization of the OpenVINO model, calibrated on a seeded sample of
the training images, the quantized model cached by its recipe so a rerun does not recalibrate
(docs/decisions.md#int8).

    cal = calibration_sample(dataset)          # CALIBRATION_IMAGES training images, CALIBRATION_SEED
    model, how = quantized(ov_model, recipe, batches)   # how: "calibrated" or "cached"

The cache (`graphcache.py`) keeps it under `$PIPELINE_CACHE_DIR/int8/<recipe hash>/`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.embed.graphcache import cache_dir, cached_model, recipe_key  # noqa: F401 - recipe_key: the tests'
from pipeline.errors import PipelineError

CALIBRATION_IMAGES = 300  # NNCF's own default subset size
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 32
INT8_KERNELS = ("u8", "i8")  # an OpenVINO execution graph's runtimePrecision of a layer run in int8
WEIGHTED_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")


@dataclass(frozen=True)
class Calibration:
    """The images a model is calibrated on: uint8 (C, H, W) arrays, which split and rows they came from. One
    made from a store's description (`described`) holds no images: it finds a cached model or none."""
    images: tuple
    split: str
    seed: int
    rows: int  # of the split, sampled from
    sha256: str
    n: int

    def describe(self) -> dict:
        return {"images": self.n, "split": self.split, "seed": self.seed, "of_rows": self.rows,
                "sha256": self.sha256}

    @classmethod
    def described(cls, d: dict) -> Calibration:
        return cls((), d["split"], d["seed"], d["of_rows"], d["sha256"], d["images"])


def calibration_sample(dataset, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> Calibration:
    """`n` images of the training split (the first split where there is none), drawn without replacement by a
    seeded generator: the same dataset and seed give the same images, in row order."""
    name = "train" if "train" in dataset.splits else next(iter(dataset.splits))
    split = dataset.splits[name]
    if not len(split):
        raise PipelineError(f"--precision int8 calibrates on the {name} split's images, and it has none")
    rows = np.sort(np.random.default_rng(seed).choice(len(split), min(n, len(split)), replace=False))
    return calibration_of([split.batch(int(i), int(i) + 1)[0] for i in rows], name, seed, len(split))


def calibration_of(images, split: str = "given", seed: int = CALIBRATION_SEED, rows: int | None = None) -> Calibration:
    h = hashlib.sha256()
    for im in images:
        h.update(str(im.shape).encode())
        h.update(np.ascontiguousarray(im).data)
    return Calibration(tuple(images), split, seed, len(images) if rows is None else rows, h.hexdigest(), len(images))


def calibration_batches(cal: Calibration, resize, channels: int) -> list[np.ndarray]:
    """The calibration images as the engine feeds its graph: resized (float32, 0..255) with `channels`
    channels (grey repeated, colour averaged to grey), in batches of CALIBRATION_BATCH."""
    import torch

    if not cal.images:
        raise PipelineError("the int8 model these features were made with is not in the cache "
                            f"({cache_dir() / 'int8'}), and its calibration images are not here")
    out = []
    with torch.inference_mode():
        for im in cal.images:
            x = resize(torch.from_numpy(np.ascontiguousarray(im))[None])
            if x.shape[1] != channels:
                x = x.expand(-1, 3, -1, -1) if channels == 3 else x.mean(dim=1, keepdim=True)
            out.append(x.numpy())
    return [np.concatenate(out[a:a + CALIBRATION_BATCH]) for a in range(0, len(out), CALIBRATION_BATCH)]


def quantized(ov, model, recipe: dict, batches) -> tuple[object, str, Path]:
    """The int8 model for `recipe`: read from the cache, else quantized by NNCF on `batches()` (a callable:
    the images are resized only when needed) and cached. Returns (model, "cached" | "calibrated", entry)."""
    def calibrate():
        nncf = import_nncf()
        data = batches()
        with contextlib.redirect_stdout(sys.stderr), quiet_torch():  # NNCF's progress bars: stdout is for results
            return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data))

    q, how, entry = cached_model(ov, "int8", recipe, calibrate)
    return q, "calibrated" if how == "made" else how, entry


def import_nncf():
    try:
        with quiet_torch():
            import nncf
    except ImportError:
        raise PipelineError("--precision int8 needs NNCF: `pip install nncf` (or pipeline's extra: "
                            "`pip install 'transfer-workbench[int8]'`)") from None
    return nncf


@contextlib.contextmanager
def quiet_torch():
    """NNCF imports torch.utils.cpp_extension, which warns on a machine without CUDA that it found none (and
    OpenVINO's convert_model imports NNCF where it is installed)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def int8_layers(compiled) -> tuple[int, int]:
    """(weighted layers run with int8 kernels, weighted layers) in a compiled model's execution graph: what
    ran, not what was asked."""
    n = k = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in WEIGHTED_LAYERS:
            continue
        n += 1
        k += "runtimePrecision" in info and info["runtimePrecision"].astype(str) in INT8_KERNELS
    return k, n


def int8_note(edesc: dict) -> str:
    """One line on what the int8 engine did: calibrated (or read from the cache) and how much of it runs int8."""
    d = edesc["int8"]
    cal, graphs = d["calibration"], d["graphs"].values()
    how = ", ".join(sorted({g["model"] for g in graphs}))
    k, n = sum(g["int8_layers"] for g in graphs), sum(g["weighted_layers"] for g in graphs)
    ran = f"{k} of {n} weighted layers run int8 kernels" if k else \
        f"none of its {n} weighted layers runs int8 kernels on this CPU: the store says {edesc['precision']}"
    return (f"int8: model {how} ({cal['images']} {cal['split']} images, seed {cal['seed']}; NNCF "
            f"{d['nncf']}); {ran}")
