"""Image files as a viewer shows them: the extensions read, a bound on pixels (decompression bombs), a cheap
up-front check that a file is complete, decoding to uint8 (C, H, W), and PIL round trips. Every failure is one
line naming the file (`show_path` keeps a name that is not valid UTF-8 printable).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


MAX_PIXELS = 64_000_000  # 8000 x 8000: far beyond any photo a CNN sees at 224 px; more is a decompression bomb
DECODE_SIDE = 1024  # decoded images keep a shorter side of at least this (the largest --image-size), no more than 2x
DECODE = {"reduce": f"by the largest whole factor keeping the shorter side >= {DECODE_SIDE} px (PIL reduce)"}
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"}  # the modes PIL's reduce() takes


@contextlib.contextmanager
def _guarded(path: Path):
    """Open an image with a bound on its pixels (PIL's bomb warning is an error here); any failure is one
    line naming the file."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except PipelineError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PipelineError(f"{show_path(path)}: image too large (more than {MAX_PIXELS:,} pixels, a possible "
                            f"decompression bomb); downscale it or remove it") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise PipelineError(f"{show_path(path)}: unreadable image ({type(e).__name__}: {e}); "
                            f"remove or replace it") from None


def show_path(path: Path) -> str:
    """A path fit for a one-line message even when its name is not valid UTF-8."""
    return os.fsdecode(os.fsencode(path)).encode("utf-8", "backslashreplace").decode("utf-8")


def verify_image(path: Path) -> None:
    """Up front, cheaply: the header parses, the size is sane, and the file is complete (PNG chunks and
    CRCs; a JPEG ends with its end-of-image marker), so a bad file fails before any work is done."""
    with _guarded(path) as im:
        fmt = im.format
        im.verify()
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))
            if b"\xff\xd9" not in f.read():
                raise PipelineError(f"{show_path(path)}: truncated JPEG (no end-of-image marker); remove or "
                                    f"replace it")


def decode_image(path: Path) -> np.ndarray:
    """One image file -> uint8 (C, H, W) with C = 1 (grayscale) or 3 (anything else), as `as_viewed` makes it."""
    with _guarded(path) as im:
        return as_viewed(im)


def as_viewed(im) -> np.ndarray:
    """A PIL image -> uint8 (C, H, W), C = 1 or 3, as a viewer shows it: a camera's EXIF orientation applied,
    transparency composited over white, 16-bit images scaled to 8 bits. Files and PIL images alike go
    through it, so a photo embeds the same whichever way it is given."""
    from PIL import Image, ImageOps

    deep = im.mode.startswith("I") or im.mode == "F"
    # 16/32-bit grayscale is scaled from 16 bits where the type or the values say so, judged before reducing
    top = 65535.0 if deep and (im.mode.startswith("I;16") or im.getextrema()[1] > 255) else 255.0
    im = _reduced(im)  # first: a rotation copies the image
    im = ImageOps.exif_transpose(im) or im  # phone photos are often stored sideways
    if deep:  # scale, do not clip, to 0..255
        a = np.asarray(im, dtype=np.float64)
        return np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)[None]
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        im = im.convert("L" if _is_gray(rgba) else "RGB")
    return from_pil(im.convert("L" if im.mode in ("L", "1") else "RGB"))


def _reduced(im):
    """`im` shrunk by the largest whole factor that keeps its shorter side at least DECODE_SIDE (PIL's reduce():
    the mean of each k x k block), so memory grows no further with an image's size than the model needs: a
    7900 x 7900 photo decodes to 1128 x 1128 (3.8 MB, not 187 MB). Every consumer resizes to at most
    DECODE_SIDE (the model's input, raw pixels, thumbnails), so this only averages sooner what its antialiased
    resize would average anyway (docs/decisions.md#decode-reduce). Unchanged below 2 x DECODE_SIDE."""
    k = min(im.size) // DECODE_SIDE
    if k < 2:
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode in ("P", "PA", "1"):  # palette and 1-bit images: their colours, as as_viewed reads them
        im = im.convert("L" if im.mode == "1" else "RGBA" if im.mode == "PA" or "transparency" in im.info
                        else "RGB")
    return im.reduce(k) if im.mode in _REDUCIBLE else im


def to_pil(img: np.ndarray):
    """uint8 (C, H, W), C = 1 or 3 -> a PIL image (L or RGB)."""
    from PIL import Image

    return Image.fromarray(img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0)))


def from_pil(im) -> np.ndarray:
    """A PIL image (L or RGB) -> a writable uint8 (C, H, W)."""
    arr = np.array(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _is_gray(rgba) -> bool:
    r, g, b, _ = (np.asarray(c) for c in rgba.split())
    return bool((r == g).all() and (g == b).all())


def visible(folder: Path) -> list[Path]:
    """A folder's entries less hidden ones (.git, .ipynb_checkpoints, .DS_Store, macOS `._x.jpg`)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def class_images(folder: Path) -> list[Path]:
    """A class folder's image files, sorted by name: regular files only (a FIFO or a socket would block or
    fail), hidden entries skipped."""
    return sorted(p for p in visible(folder) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
