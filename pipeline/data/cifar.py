"""CIFAR-10's python batches, unpickled with only what a batch holds (dicts, lists, bytes, numpy arrays):
nothing executable, and labels checked before they are materialised."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from pipeline.data.dataset import Dataset, Split
from pipeline.errors import PipelineError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, bytes and numpy arrays; nothing executable."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
               # pickle protocol 5 stores arrays as a buffer plus dtype and shape: plain data as well
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise PipelineError(f"missing file {path}; the folder must hold CIFAR-10's python batches "
                            f"(data_batch_1..5, test_batch)") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a pickle, forbidden content
        raise PipelineError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise PipelineError(f"{path}: not a CIFAR-10 python batch (holds {type(d).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_labels(lab, path: Path) -> np.ndarray:
    """'labels' as a flat int64 array, checked before any conversion: nested lists (which a small pickle
    can share to describe an enormous array) or other types are refused without materialising them."""
    if isinstance(lab, np.ndarray):
        if lab.ndim != 1 or lab.dtype.kind not in "iu":
            raise PipelineError(f"{path}: 'labels' must be a flat list of integers (got a {lab.dtype} array "
                                f"of shape {lab.shape})")
        return lab.astype(np.int64)
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not isinstance(lab, (list, tuple)) or not all(is_int(v) for v in lab):
        kind = type(lab).__name__ if not isinstance(lab, (list, tuple)) else \
            f"a list holding {type(next(v for v in lab if not is_int(v))).__name__}"
        raise PipelineError(f"{path}: 'labels' must be a flat list of integers, not {kind}")
    try:
        return np.fromiter((int(v) for v in lab), dtype=np.int64, count=len(lab))
    except OverflowError:
        raise PipelineError(f"{path}: 'labels' holds integers out of range") from None


def load_cifar10(data_dir: Path | None) -> Dataset:
    if data_dir is None:
        raise PipelineError("cifar10 needs --data-dir: the folder with CIFAR-10's python batches "
                            "(cifar-10-batches-py)")
    d = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    classes = CIFAR10_CLASSES
    if (d / "batches.meta").exists():
        meta = _read_cifar_batch(d / "batches.meta")
        names = meta.get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    splits = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = [], []
        for fname in files:
            b = _read_cifar_batch(d / fname)
            data, lab = b.get("data"), b.get("labels")
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                    or data.shape[1] != 3072 or lab is None:
                raise PipelineError(f"{d / fname}: expected 'data' as N x 3072 uint8 and 'labels'")
            lab = _cifar_labels(lab, d / fname)
            if len(lab) != len(data):
                raise PipelineError(f"{d / fname} has {len(data):,} images but {len(lab):,} labels")
            if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
                raise PipelineError(f"{d / fname}: labels out of range 0..{len(classes) - 1}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        splits[split] = Split(split, np.concatenate(labels), images=np.concatenate(images))
    return Dataset("cifar10", classes, splits, os.path.abspath(d))  # absolute: read again from any folder
