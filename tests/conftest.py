"""Small data the tests make: tiny IDX / CIFAR / folder datasets and a random-weight ResNet-18 file."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # array-API tests need it before scipy is first imported
# UMAP's compiled code: one cache for the suite and every process it starts, outside the user's home
os.environ.setdefault("PIPELINE_NUMBA_CACHE",
                      os.path.join(tempfile.gettempdir(), f"pipeline-tests-numba-{os.getuid()}"))

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.datasets import write_idx

N_TRAIN, N_TEST = 48, 24


def class_images(labels: np.ndarray, size=28, channels=None, seed=0) -> np.ndarray:
    """Images whose content depends on the label (a bright band at a class-specific row) plus noise."""
    rng = np.random.default_rng(seed)
    shape = (len(labels), size, size) + ((channels,) if channels else ())
    x = rng.integers(0, 60, size=shape, dtype=np.uint8)
    for i, c in enumerate(labels):
        r = 2 + (int(c) * (size - 6)) // 10
        x[i, r:r + 3] = 220
    return x


def make_idx_dir(root: Path, n_train=N_TRAIN, n_test=N_TEST, gz=True, seed=0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", class_images(y, seed=seed + n))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y)
    return root


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    return make_idx_dir(tmp_path / "fmnist")


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    d = tmp_path / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 8)]:
        y = rng.integers(0, 10, n)
        x = class_images(y, size=32, channels=3).transpose(0, 3, 1, 2).reshape(n, 3072)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in ["airplane", "automobile", "bird", "cat", "deer",
                                                            "dog", "frog", "horse", "ship", "truck"]]}, f)
    return d.parent


@pytest.fixture
def folder_dir(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "wild"
    rng = np.random.default_rng(2)
    for split, n in (("train", 4), ("test", 3)):
        for c in ("boot", "shirt", "trouser"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
                arr = rng.integers(0, 255, size=size + ((3,) if i % 2 else ()), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory) -> Path:
    """A randomly initialised torchvision ResNet-18 state dict, as --weights PATH would take."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def runner():
    return CliRunner()


def run_cli(runner, *args):
    from pipeline.cli import main

    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, f"not one line: {err!r}"
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in err, (frag, err)


def write_store(path: Path, X_train, y_train, X_test, y_test, dataset="fashion-mnist", backbone="toynet",
                classes=None) -> Path:
    """A finished store written directly (the format features/README.md documents)."""
    from pipeline.datasets import FASHION_MNIST_CLASSES

    path.mkdir(parents=True)
    for name, a in (("X_train", X_train), ("y_train", y_train), ("X_test", X_test), ("y_test", y_test)):
        np.save(path / f"{name}.npy", a)
    meta = {"rows": {"train": len(y_train), "test": len(y_test)}, "backbone": {"name": backbone},
            "dataset": {"name": dataset, "classes": classes or FASHION_MNIST_CLASSES}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def blobs(n, dim=16, classes=10, seed=0, spread=1.0):
    """Class-separable Gaussian blobs (float32 features, int64 labels)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (classes, dim))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(0, spread, (n, dim))).astype(np.float32), y.astype(np.int64)
