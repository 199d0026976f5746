"""Plain helpers the tests share: small data they make (IDX files, class-dependent images, photo folders of
shapes, stores, blobs), the CLI driven through click's runner, the one-line-error check, and one set of fast
extraction settings."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data import FASHION_MNIST_CLASSES, write_idx

N_TRAIN, N_TEST = 48, 24

# the one set of fast extraction settings, GPU or not: the CPU, random weights, small images, exact fp32, small
# batches. FAST for an ExtractRequest (`ExtractRequest(..., **FAST)`), fast_args()/FAST_ARGS for the CLI
FAST = dict(device="cpu", weights="none", image_size=48, precision="fp32", batch_size=8)


def fast_args(**changes) -> list:
    """FAST as `pipeline extract` options, with `changes` applied; a change to None drops that option (its
    default applies)."""
    opts = {**FAST, **changes}
    return [a for k, v in opts.items() if v is not None for a in (f"--{k.replace('_', '-')}", v)]


FAST_ARGS = fast_args()
EXTRACT = ["extract", *FAST_ARGS]


def same_features(a, b):
    """Two stores' features are bit-identical."""
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_test, b.X_test)


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
                classes=None, image_size=224) -> Path:
    """A finished store written directly (the format features/README.md documents)."""
    path.mkdir(parents=True)
    for name, a in (("X_train", X_train), ("y_train", y_train), ("X_test", X_test), ("y_test", y_test)):
        np.save(path / f"{name}.npy", a)
    sha = {s: hashlib.sha256(np.asarray(y, "<i8").tobytes()).hexdigest() for s, y in (("train", y_train),
                                                                                     ("test", y_test))}
    dim = int(np.shape(X_train)[1])
    meta = {"rows": {"train": len(y_train), "test": len(y_test)}, "dim": dim, "image_size": image_size,
            "backbone": {"name": backbone, "feature_dim": dim},
            "dataset": {"name": dataset, "classes": classes or FASHION_MNIST_CLASSES, "labels_sha256": sha}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def blobs(n, dim=16, classes=10, seed=0, spread=1.0):
    """Class-separable Gaussian blobs (float32 features, int64 labels)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (classes, dim))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(0, spread, (n, dim))).astype(np.float32), y.astype(np.int64)


def fits_on_cluster(cluster) -> int:
    """How many grid-search fits a (local) Dask cluster's scheduler has run to completion: its tasks are named
    after the search's per-fit function (`_scored`), batched by joblib's Dask backend."""
    return sum(p.state_counts.get("memory", 0) for name, p in cluster.scheduler.task_prefixes.items()
               if "_scored" in name)


# --- a user's photo folder: shapes of random colour, size and place ---

SHAPES = ("circle", "square", "triangle")
FORMATS = ("jpg", "png", "webp", "bmp")


def draw(shape: str, rng, size=None, dark_on_light=False) -> Image.Image:
    w, h = size or (int(rng.integers(40, 110)), int(rng.integers(40, 110)))
    bg = tuple(int(v) for v in (rng.integers(200, 255, 3) if dark_on_light else rng.integers(0, 60, 3)))
    fg = tuple(int(v) for v in (rng.integers(0, 90, 3) if dark_on_light else rng.integers(150, 255, 3)))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    r = min(w, h) * rng.uniform(0.25, 0.4)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)],
                  fill=fg)
    return im


def shapes_folder(root, n_per_class: int, seed=0, names=None, **kw):
    """root/<shape>/<i>.<fmt>: formats mixed, every third image grayscale."""
    rng = np.random.default_rng(seed)
    for shape, name in zip(SHAPES, names or SHAPES):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            im = draw(shape, rng, **kw)
            im = im.convert("L") if i % 3 == 2 else im
            im.save(root / name / f"{i:03d}.{FORMATS[i % len(FORMATS)]}")
    return root
