"""Decoding large photos: the whole image (before) against the image reduced on decode by the largest whole
factor keeping its shorter side >= DECODE_SIDE (now, `pipeline/data/images.py`), side by side in one run:
the decoded bytes per image, the decode time, and how far the embeddings move (cosine of the two, per image),
the CPU named. The images are Fashion-MNIST's, upscaled (bicubic) to photo sizes with seeded sensor noise.

    python benchmarks/bench_decode_reduce.py --data-dir DIR [--images 16] [--side 4000] [--backbone efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.data import images as imgmod  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402


def photos(data_dir: str, n: int, side: int, folder: Path) -> list[Path]:
    from PIL import Image

    ds = load_dataset("fashion-mnist", data_dir, limit=n)
    rng = np.random.default_rng(0)
    out = []
    for i, img in enumerate(ds.splits["test"].batch(0, n)):
        big = Image.fromarray(img[0]).resize((side, side * 3 // 4), Image.BICUBIC).convert("RGB")
        a = np.asarray(big, np.int16) + rng.integers(-6, 7, (side * 3 // 4, side, 3))
        out.append(folder / f"{i}.jpg")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out[-1], quality=92)
    return out


def decode_all(files: list[Path]) -> tuple[list[np.ndarray], float]:
    t = time.perf_counter()
    arrays = [imgmod.decode_image(f) for f in files]
    return arrays, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    a = ap.parse_args()
    from pipeline import ImageEmbedder

    with tempfile.TemporaryDirectory() as tmp:
        files = photos(a.data_dir, a.images, a.side, Path(tmp))
        reduced, t_new = decode_all(files)
        keep = imgmod._reduced
        imgmod._reduced = lambda im: im  # the whole image, as before
        try:
            whole, t_old = decode_all(files)
        finally:
            imgmod._reduced = keep
        emb = ImageEmbedder(a.backbone, device="cpu").fit()
        f_old, f_new = emb.transform(whole), emb.transform(reduced)
    cos = (f_old * f_new).sum(1) / np.linalg.norm(f_old, axis=1) / np.linalg.norm(f_new, axis=1)
    print(f"CPU: {cpu_name()}; {a.images} JPEGs of {a.side} x {a.side * 3 // 4}, {a.backbone}")
    print(f"decoded MB per image: whole {whole[0].nbytes / 1e6:.1f}, reduced {reduced[0].nbytes / 1e6:.1f} "
          f"({whole[0].nbytes / reduced[0].nbytes:.1f}x less), shape {reduced[0].shape}")
    print(f"decode s: whole {t_old:.2f}, reduced {t_new:.2f} (new/old {t_new / t_old:.2f}x)")
    print(f"embedding cosine, whole vs reduced: min {cos.min():.6f}, mean {cos.mean():.6f}")


if __name__ == "__main__":
    main()
