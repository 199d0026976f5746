"""Domain matching (`--match-domain`): map a photo "in the wild" toward the look of a dataset's training
images before its features are made.

Fashion-MNIST's images were made from product photos by trimming the product, resizing its longest edge to
28 px, padding the short edge to a centred 28 x 28 square, converting to grayscale and inverting, so the
object is bright on a black background (Xiao et al. 2017, arXiv:1708.07747, Fig. 2). `match` does the same to
a photo: grayscale; inverted when its border (the background) is lighter than mid-grey; background level
subtracted and contrast stretched; cropped to the object's bounding box; padded to a centred square; resized
to 28 px. CIFAR-10 is natural photos: a centred square crop resized to 32 px, in colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.images import from_pil, to_pil
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Domain:
    size: int
    channels: int
    object_on_dark: bool  # product silhouettes: invert light backgrounds, crop to the object, pad to square

    def describe(self) -> str:
        if self.object_on_dark:
            return (f"grayscale, inverted when the background is light, background removed and contrast "
                    f"stretched, cropped to the object, padded to a centred square, resized to {self.size} px")
        return f"{'grayscale' if self.channels == 1 else 'colour'}, centre square crop, resized to {self.size} px"


DOMAINS = {"fashion-mnist": Domain(28, 1, True), "mnist": Domain(28, 1, True), "cifar10": Domain(32, 3, False)}


def domain_for(dataset: str) -> Domain:
    if dataset not in DOMAINS:
        raise PipelineError(f"--match-domain knows the look of {', '.join(DOMAINS)}, not of {dataset} (an image "
                            f"folder's photos need no matching to photos); run without --match-domain")
    return DOMAINS[dataset]


def match(img: np.ndarray, domain: Domain) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (domain.channels, size, size)."""

    if img.shape[0] == 1:
        gray = img[0].astype(np.float32)
        rgb = np.repeat(img, 3, axis=0)
    else:
        rgb = img[:3]
        gray = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).astype(np.float32)
    if not domain.object_on_dark:
        h, w = gray.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = (gray[None] if domain.channels == 1 else rgb)[:, top:top + s, left:left + s]
        return _resize(np.clip(crop, 0, 255).astype(np.uint8), domain.size)
    h, w = gray.shape
    b = max(1, min(h, w) // 20)
    border = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    if np.median(border) > 127:  # a light background: the object becomes the bright part
        gray, border = 255 - gray, 255 - border
    obj = np.clip(gray - np.percentile(border, 90), 0, None)
    peak = np.percentile(obj, 99.5)
    obj = np.clip(obj * (255 / peak), 0, 255) if peak > 0 else obj
    mask = obj > 0.15 * 255
    rows, cols = np.flatnonzero(mask.sum(1) >= max(1, 0.01 * w)), np.flatnonzero(mask.sum(0) >= max(1, 0.01 * h))
    if len(rows) and len(cols):  # nothing stands out: keep the whole frame
        obj = obj[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    oh, ow = obj.shape
    s = max(oh, ow)
    square = np.zeros((s, s), np.float32)
    square[(s - oh) // 2:(s - oh) // 2 + oh, (s - ow) // 2:(s - ow) // 2 + ow] = obj
    out = _resize(square.astype(np.uint8)[None], domain.size)
    return out if domain.channels == 1 else np.repeat(out, 3, axis=0)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return from_pil(to_pil(img).resize((size, size), Image.Resampling.LANCZOS))  # writable, for torch
