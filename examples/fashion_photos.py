"""Write "fashion photos": Fashion-MNIST's garments turned into colour JPEG photos of varied sizes, as image
folders to try `pipeline run --dataset folder`, `predict` and `evaluate` on. It needs Fashion-MNIST's IDX files:
`--data-dir`, `$PIPELINE_DATA_DIR` or Debian's package, else torchvision downloads them (online).

Each photo: a Fashion-MNIST image upscaled (bicubic) into an object of random colour and shading, rotated a
little, scaled and placed off-centre on a canvas of random size and aspect, over a light plain, gradient or
textured background (dark object on light, unlike Fashion-MNIST's bright on black), saved as JPEG of random
quality. Train photos come from Fashion-MNIST's training images, test and wild photos from disjoint halves of
its test images, so a model trained on Fashion-MNIST never saw the garment behind a wild photo.

    python examples/fashion_photos.py OUT [--train 300 --test 100 --wild 30] [--data-dir DIR]

writes OUT/fashion-photos/{train,test}/<class>/*.jpg (a folder study) and OUT/wild/<class>/*.jpg (the in-the-wild
set for the Fashion-MNIST study; folder names as `T-shirt_top`, matched to `T-shirt/top` by `pipeline evaluate`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pipeline.data import FASHION_MNIST_CLASSES, load_dataset
from pipeline.errors import PipelineError


def photo(img28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 28 x 28 uint8 garment (bright on black) -> an RGB photo."""
    h = int(rng.integers(120, 320))
    w = int(h * rng.uniform(0.75, 1.33))
    bg_kind = rng.choice(["plain", "gradient", "texture"], p=[0.5, 0.3, 0.2])
    light = rng.uniform(200, 250, size=3)
    if bg_kind == "plain":
        bg = np.broadcast_to(light, (h, w, 3)).astype(np.float32)
    elif bg_kind == "gradient":
        other = rng.uniform(150, 240, size=3)
        t = np.linspace(0, 1, h)[:, None, None]
        bg = np.broadcast_to(light * (1 - t) + other * t, (h, w, 3)).astype(np.float32)
    else:
        noise = np.asarray(Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1), dtype=np.uint8))
                           .resize((w, h), Image.Resampling.BICUBIC), np.float32)
        bg = light * (0.8 + 0.2 * noise[..., None] / 255)
    side = int(min(h, w) * rng.uniform(0.5, 0.9))
    obj = Image.fromarray(img28).resize((side, side), Image.Resampling.BICUBIC)
    obj = obj.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
    alpha = np.asarray(obj, np.float32) / 255
    colour = rng.uniform(0, 200, size=3)  # garments darker than the background, any hue
    shade = colour * (0.6 + 0.4 * alpha[..., None])  # the garment's own texture shows as shading
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    region = bg[top:top + side, left:left + side].copy()
    a = np.clip(alpha * 1.5, 0, 1)[..., None]
    bg = bg.copy()
    bg[top:top + side, left:left + side] = region * (1 - a) + shade * a
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))


def write(images: np.ndarray, labels: np.ndarray, per_class: int, root: Path, rng, names) -> int:
    n = 0
    for c, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            photo(images[i, 0], rng).save(d / f"{name}_{k:05d}.jpg", quality=int(rng.integers(60, 95)))
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=300, help="photos per class, from the training images")
    ap.add_argument("--test", type=int, default=100, help="photos per class, from the first half of the test images")
    ap.add_argument("--wild", type=int, default=30, help="photos per class, from the second half of the test images")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: as `pipeline extract`)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        ds = load_dataset("fashion-mnist", a.data_dir)
    except PipelineError as e:  # no data here and no network: one line, as the `pipeline` command says it
        raise SystemExit(f"error: {e}") from None
    rng = np.random.default_rng(a.seed)
    safe = [n.replace("/", "_") for n in FASHION_MNIST_CLASSES]  # a folder name cannot hold "/"
    tr, te = ds.splits["train"], ds.splits["test"]
    half = len(te) // 2
    n = write(tr.images, tr.labels, a.train, a.out / "fashion-photos" / "train", rng, safe)
    n += write(te.images[:half], te.labels[:half], a.test, a.out / "fashion-photos" / "test", rng, safe)
    n += write(te.images[half:], te.labels[half:], a.wild, a.out / "wild", rng, safe)
    print(f"{n:,} photos in {a.out}/fashion-photos/{{train,test}} and {a.out}/wild")


if __name__ == "__main__":
    main()
