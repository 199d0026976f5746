"""A big image folder: listing, up-front checks, hashing, decoding and extraction, with memory, side by side.

    python benchmarks/bench_folder.py [--n 100000] [--extract 3000] [--dir DIR] [--keep]

Writes N small JPEGs (64-160 px, 10 classes; not committed) into DIR/<class>/, then measures in one process:
- listing + up-front verification (`load_dataset("folder")`: every file opened and checked) and the content
  hash (every byte read), with peak RSS after each: the folder is held as a list of paths, never as images;
- decoding throughput (PIL, one thread, as the extraction's prefetch thread does it);
- extraction of the first `--extract` images per split with EfficientNet-Lite0 at 224 px (the default engine)
  and the share of its time that decoding takes.
Prints one table with the CPU named. Memory must stay flat in N apart from the paths (~150 bytes each).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.hardware import cpu_name  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def _write(args):
    root, start, stop = args
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, stop):
        c = CLASSES[i % 10]
        h, w = int(rng.integers(64, 161)), int(rng.integers(64, 161))
        base = rng.integers(0, 255, 3)
        img = np.clip(base + rng.normal(0, 40, (h // 8 + 1, w // 8 + 1, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).resize((w, h)).save(Path(root) / c / f"{i:07d}.jpg", quality=85)
    return stop - start


def make_folder(root: Path, n: int) -> float:
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    chunks = [(str(root), a, min(a + 2000, n)) for a in range(0, n, 2000)]
    t = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        sum(pool.map(_write, chunks))
    return time.perf_counter() - t


def rss_mb() -> float:
    """Resident memory now (Linux), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--extract", type=int, default=3000, help="images per split to extract (0: skip)")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated folder")
    a = ap.parse_args()
    root = a.dir or Path(tempfile.mkdtemp(prefix="bench-folder-"))
    rows = []
    try:
        if not any(root.glob("class0/*.jpg")):
            s = make_folder(root, a.n)
            rows.append(("write N JPEGs (2 processes)", s, a.n / s, "img/s"))
        size = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        from pipeline.data import load_dataset
        from pipeline.data.images import decode_image

        rss0 = rss_mb()
        t = time.perf_counter()
        ds = load_dataset("folder", root, test_fraction=0.2)
        s = time.perf_counter() - t
        n = sum(len(x) for x in ds.splits.values())
        rows.append((f"list + verify {n:,} files (load_dataset)", s, n / s, "files/s"))
        rss_list = rss_mb()
        t = time.perf_counter()
        ds.content_hash  # noqa: B018 - the property computes it
        s = time.perf_counter() - t
        rows.append((f"content hash ({size / 2**20:.0f} MiB read)", s, n / s, "files/s"))
        files = ds.splits["train"].files[:5000]
        t = time.perf_counter()
        for f in files:
            decode_image(f)
        s = time.perf_counter() - t
        decode_rate = len(files) / s
        rows.append((f"decode {len(files):,} JPEGs, one thread (PIL)", s, decode_rate, "img/s"))
        if a.extract:
            from pipeline.embed.extract import extract
            from pipeline.embed.request import ExtractRequest

            sub = load_dataset("folder", root, limit=a.extract, test_fraction=0.2)
            out = Path(tempfile.mkdtemp(prefix="bench-folder-store-")) / "s"
            t = time.perf_counter()
            r = extract(ExtractRequest(dataset="folder", backbone="efficientnet_lite0", out=out), dataset=sub,
                        progress=False, log=lambda m: None)
            s = time.perf_counter() - t
            rows.append((f"extract {r.images:,} images, EfficientNet-Lite0 224 px (auto engine)", s, r.img_per_s,
                         f"img/s; decoding ~{100 * r.img_per_s / decode_rate:.0f} % of one core's time"))
            shutil.rmtree(out.parent, ignore_errors=True)
        print(f"\n{cpu_name()}, {os.cpu_count()} cores; {n:,} JPEGs ({size / n / 1024:.1f} KiB each on average)\n")
        print("| step | seconds | rate | |\n|---|---|---|---|")
        for name, s, rate, unit in rows:
            print(f"| {name} | {s:.1f} | {rate:,.0f} | {unit} |")
        print(f"\nRSS: {rss0:.0f} MB before listing, {rss_list:.0f} MB after listing and verifying {n:,} files "
              f"({(rss_list - rss0) * 2**20 / n:.0f} bytes per file: paths, labels), peak {peak_mb():.0f} MB "
              f"(the extraction's model and batches)")
    finally:
        if not a.keep and a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
