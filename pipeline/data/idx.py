"""IDX files (Fashion-MNIST, MNIST; gzip or not, flat or torchvision's FashionMNIST/raw layout): each file's
header checked against its size before anything large is allocated, one line naming the file otherwise.
Fashion-MNIST is found by itself: --data-dir, $PIPELINE_DATA_DIR, Debian's dataset-fashion-mnist, or
torchvision's download when online.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.data.dataset import Dataset, Split
from pipeline.errors import PipelineError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MAX_IDX_BYTES = 1 << 33  # 8 GiB: no IDX file of a real image dataset claims more
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a uint8 IDX file (gzip or not) with `ndim` dimensions, validating it before allocating."""
    path = Path(path)
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    if path.suffix == ".gz" and not is_gzip:
        raise PipelineError(f"{path}: not a gzip file although it is named .gz; re-download it")
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise PipelineError(f"{path}: truncated (no complete IDX header); re-download it")
            zero, dtype, nd = struct.unpack(">HBB", head)
            if zero != 0:
                raise PipelineError(f"{path}: not an IDX file (bad magic number {head.hex()})")
            if dtype != 0x08:
                raise PipelineError(f"{path}: IDX element type 0x{dtype:02x}, expected unsigned bytes (0x08)")
            if nd != ndim:
                raise PipelineError(f"{path}: IDX file has {nd} dimensions, expected {ndim} "
                                    f"({'images' if ndim == 3 else 'labels'})")
            raw = f.read(4 * nd)
            if len(raw) < 4 * nd:
                raise PipelineError(f"{path}: truncated IDX header; re-download it")
            dims = struct.unpack(f">{nd}I", raw)
            n = int(np.prod(dims, dtype=np.int64))
            if n > MAX_IDX_BYTES:
                raise PipelineError(f"{path}: header claims shape {dims} ({n / 2**30:.0f} GiB), "
                                    f"which is absurd; the file is corrupt")
            expected = 4 + 4 * nd + n
            actual = _gzip_size(path) if is_gzip else path.stat().st_size
            if actual != (expected % (1 << 32) if is_gzip else expected):  # gzip stores the size mod 2**32
                raise PipelineError(f"{path}: header claims shape {dims} ({expected:,} bytes) but the file "
                                    f"holds {actual:,} bytes; it is truncated or corrupt, re-download it")
            data = bytearray(n)  # writable, filled in place: one copy of the data in memory
            got = f.readinto(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise PipelineError(f"{path}: truncated or corrupt gzip data ({e}); re-download it") from None
    if got != n:
        raise PipelineError(f"{path}: truncated ({got:,} of {n:,} data bytes); re-download it")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _gzip_size(path: Path) -> int:
    """Uncompressed size mod 2**32, from the gzip trailer (ISIZE); costs no decompression."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return -1
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _find_idx_dir(data_dir: Path, torchvision_name: str) -> Path:
    for d in (data_dir, data_dir / torchvision_name / "raw", data_dir / "raw"):
        if any((d / (stem + ext)).exists() for stem in IDX_FILES["train"] for ext in ("", ".gz")):
            return d
    return data_dir


def _load_idx_dataset(name: str, data_dir: Path, torchvision_name: str, classes: list[str]) -> Dataset:
    d = _find_idx_dir(data_dir, torchvision_name)
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        paths = []
        for stem in (images_stem, labels_stem):
            found = [d / (stem + ext) for ext in (".gz", "") if (d / (stem + ext)).exists()]
            if not found:
                raise PipelineError(f"missing file {d / stem}[.gz] ({name} {split} split); the folder must hold "
                                    f"the four IDX files (or torchvision's {torchvision_name}/raw layout)")
            paths.append(found[0])
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
        if len(images) != len(labels):
            raise PipelineError(f"{paths[0]} has {len(images):,} images but {paths[1]} has {len(labels):,} labels")
        if labels.size and labels.max() >= len(classes):
            bad = int(np.argmax(labels >= len(classes)))
            raise PipelineError(f"{paths[1]}: label {labels[bad]} at row {bad} is out of range "
                                f"0..{len(classes) - 1}")
        splits[split] = Split(split, labels.astype(np.int64), images=images[:, None, :, :])
    return Dataset(name, classes, splits, os.path.abspath(d))  # absolute: read again from any folder


def load_fashion_mnist(data_dir: Path | None) -> Dataset:
    if data_dir is None:
        data_dir = _default_fashion_mnist_dir()
    return _load_idx_dataset("fashion-mnist", data_dir, "FashionMNIST", FASHION_MNIST_CLASSES)


def load_mnist(data_dir: Path | None) -> Dataset:
    if data_dir is None:
        raise PipelineError("mnist needs --data-dir: the folder with the four MNIST IDX files")
    return _load_idx_dataset("mnist", data_dir, "MNIST", [str(i) for i in range(10)])


def _default_fashion_mnist_dir() -> Path:
    """--data-dir, then $PIPELINE_DATA_DIR, then Debian's dataset-fashion-mnist, then torchvision's download."""
    env = os.environ.get("PIPELINE_DATA_DIR")
    if env:
        if not Path(env).is_dir():
            raise PipelineError(f"PIPELINE_DATA_DIR={env} is not a folder; fix it or pass --data-dir")
        return Path(env)
    if DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipeline" / "data"
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any failure to download gets the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(
            "no Fashion-MNIST data found and the download failed "
            f"({reason}): pass --data-dir DIR (the four IDX files), set PIPELINE_DATA_DIR, "
            "or `apt-get install dataset-fashion-mnist`") from None
    return root / "FashionMNIST" / "raw"



def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in .gz); for tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
