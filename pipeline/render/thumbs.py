"""Thumbnails for galleries and contact sheets: an image as the user sees it (folder photos in colour,
Fashion-MNIST's 28 px as they are, to be scaled up without blur by the page), small, as a data URI."""
from __future__ import annotations

import base64
import io

import numpy as np

THUMB = 96  # the longest side of a photo's thumbnail, in pixels
SMALL = 64  # images at most this large are kept at their own size (PNG), the page scales them up pixelated


def thumbnail(img: np.ndarray, side: int = THUMB) -> str:
    """uint8 (C, H, W) image -> `data:image/...;base64,...`: small images as lossless PNG at their own size;
    larger ones shrunk to `side` (aspect kept) as JPEG."""
    from PIL import Image

    a = np.asarray(img, dtype=np.uint8)
    a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    im = Image.fromarray(np.ascontiguousarray(a))
    buf = io.BytesIO()
    if max(im.size) <= SMALL:
        im.save(buf, "PNG", optimize=True)
        kind = "png"
    else:
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        im.save(buf, "JPEG", quality=82)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


class Thumbnails(dict):
    """Thumbnails as {"split:index": data URI}, each made once, on first use, from `image(split, index)` (a
    uint8 (C, H, W) array): the galleries' and the audit's pages embed each image once however often shown."""

    def __init__(self, image):
        super().__init__()
        self._image = image

    def key(self, split: str, i: int) -> str:
        k = f"{split}:{i}"
        if k not in self:
            self[k] = thumbnail(self._image(split, i))
        return k
