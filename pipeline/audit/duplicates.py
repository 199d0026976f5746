"""Exact duplicates (the same decoded pixels) and near duplicates (neighbours in the embedding that the pixels
confirm: a re-encoded, resized or centre-cropped copy of the same image), grouped."""
from __future__ import annotations

import hashlib

import numpy as np

from pipeline.audit import CROPS, PIXEL_CORR, PIXEL_MAD, SIDE
from pipeline.console import progress_bar

# signature pairs compared: both whole, or one whole and the other cropped (a crop of it)
FLAT = 0.5  # a signature whose grey levels vary less than this (standard deviation) is flat
_ALIGN = [(0, 0)] + [(0, c) for c in range(1, len(CROPS))] + [(c, 0) for c in range(1, len(CROPS))]


def signature(img: np.ndarray) -> tuple[str, np.ndarray]:
    """uint8 (C, H, W) image -> (sha256 of its decoded pixels, (len(CROPS), SIDE*SIDE) float32 grey
    signatures: the image, then each centre crop, reduced to SIDE x SIDE by area averaging)."""
    from PIL import Image

    from pipeline.data.images import to_pil

    a = np.ascontiguousarray(img, dtype=np.uint8)
    digest = hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()
    im = to_pil(a).convert("L")
    w, h = im.size
    sigs = []
    for f in CROPS:
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        left, top = (w - cw) // 2, (h - ch) // 2
        sigs.append(np.asarray(im.crop((left, top, left + cw, top + ch)).resize((SIDE, SIDE), Image.Resampling.BOX),
                               np.float32).reshape(-1))
    return digest, np.stack(sigs)


def signatures(split, desc: str = "", progress: bool | None = None) -> tuple[list[str], np.ndarray]:
    """Every image of a split: (hashes, (n, len(CROPS), SIDE*SIDE) signatures)."""
    hashes, sigs = [], np.empty((len(split), len(CROPS), SIDE * SIDE), np.float32)
    with progress_bar(len(split), progress=progress, unit="img", desc=f"pixel signatures {desc}".strip()) as bar:
        for a in range(0, len(split), 512):
            for i, img in enumerate(split.batch(a, min(a + 512, len(split))), a):
                h, sigs[i] = signature(img)
                hashes.append(h)
            bar.update(min(a + 512, len(split)) - a)
    return hashes, sigs


def pixel_match(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signatures (n, len(CROPS), S) of n pairs -> (correlation, mean absolute difference) of each pair's
    best-aligned signatures (whole vs whole, or one whole vs the other's crop; the highest correlation)."""
    def z(s):
        sd = s.std(-1, keepdims=True)
        return np.where(sd > FLAT, (s - s.mean(-1, keepdims=True)) / np.maximum(sd, FLAT), 0.0)

    def r(x, y):  # two flat signatures (a blank image) correlate fully; then the difference decides
        both_flat = (x.std(-1) <= FLAT) & (y.std(-1) <= FLAT)
        return np.where(both_flat, 1.0, (z(x) * z(y)).mean(-1))

    corr = np.stack([r(a[:, i], b[:, j]) for i, j in _ALIGN], 1)
    mad = np.stack([np.abs(a[:, i] - b[:, j]).mean(-1) for i, j in _ALIGN], 1)
    best = corr.argmax(1)
    rows = np.arange(len(a))
    return corr[rows, best], mad[rows, best]


def confirmed(corr: np.ndarray, mad: np.ndarray) -> np.ndarray:
    return (corr >= PIXEL_CORR) & (mad <= PIXEL_MAD)


def groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of size >= 2) of the pairs over n items, each sorted, largest first."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in {k for p in pairs for k in p}:
        members.setdefault(find(i), []).append(i)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def exact_pairs(hashes: list[str]) -> list[tuple[int, int]]:
    """Pairs (first, other) of items with the same pixels: each to the first of its hash."""
    first: dict[str, int] = {}
    pairs = []
    for i, h in enumerate(hashes):
        if h in first:
            pairs.append((first[h], i))
        else:
            first[h] = i
    return pairs
