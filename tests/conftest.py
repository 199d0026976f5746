"""Fixtures: tiny IDX / CIFAR / folder datasets, a random-weight ResNet-18 file, the CLI runner. Plain
helpers are in helpers.py."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # array-API tests need it before scipy is first imported
# UMAP's compiled code: one cache for the suite and every process it starts, outside the user's home
os.environ.setdefault("PIPELINE_NUMBA_CACHE",
                      os.path.join(tempfile.gettempdir(), f"pipeline-tests-numba-{os.getuid()}"))
# converted and int8 models made by the tests: cached outside the user's home for the suite and every process it
# starts (a test that checks the cache sets its own), and removed when the suite ends
if "PIPELINE_CACHE_DIR" not in os.environ:
    import atexit
    import shutil

    os.environ["PIPELINE_CACHE_DIR"] = tempfile.mkdtemp(prefix="pipeline-tests-cache-")
    atexit.register(shutil.rmtree, os.environ["PIPELINE_CACHE_DIR"], ignore_errors=True)

import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST, blobs, class_images, make_idx_dir, write_store

REPO = Path(__file__).resolve().parents[1]


def _repo_outputs() -> set[Path]:
    """What is in the repository's own features/ and reports/ folders (a user's finished work included)."""
    return {f for d in ("features", "reports") for f in (REPO / d).rglob("*")}


@pytest.fixture(autouse=True, scope="session")
def _tests_leave_the_repository_alone():
    """A test that forgets to send a store or a report to its tmp_path (`pipeline run` puts the store under
    ./features/) fails the suite instead of leaving files in the checkout."""
    before = _repo_outputs()
    yield
    added = sorted(str(f.relative_to(REPO)) for f in _repo_outputs() - before)
    assert not added, f"tests wrote into the repository: {added[:5]}"


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    return make_idx_dir(tmp_path / "fmnist")


@pytest.fixture
def data(tmp_path) -> Path:
    """A small Fashion-MNIST IDX folder (40 train, 16 test images) for the store and weights tests."""
    return make_idx_dir(tmp_path / "data", n_train=40, n_test=16)


@pytest.fixture
def reference(data, tmp_path):
    """`data` extracted once with the FAST settings: the features an unbroken run gives."""
    from pipeline import load_features
    from pipeline.embed.extract import extract
    from pipeline.embed.request import ExtractRequest

    req = ExtractRequest(dataset="fashion-mnist", backbone="resnet18", data_dir=data, out=tmp_path / "ref", **FAST)
    return load_features(extract(req, progress=False).path)


@pytest.fixture
def blob_store(tmp_path) -> Path:
    """A finished store of separable blobs (120 train, 40 test rows) under ./features/toynet."""
    return write_store(tmp_path / "features" / "toynet", *blobs(120), *blobs(40, seed=1))


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


