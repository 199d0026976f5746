"""Dataset readers: IDX (Fashion-MNIST, MNIST), CIFAR-10 python batches, and image folders.

Every reader validates its files and raises `PipelineError` naming the file and the problem, before any
large allocation. A `Dataset` holds its splits as uint8 NCHW images (or lazily decoded files) and labels;
it knows nothing of models.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MAX_IDX_BYTES = 1 << 33  # 8 GiB: no IDX file of a real image dataset claims more
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class Split:
    """One split: `len(split)` images, `labels` (int64), and `batch(a, b)` -> uint8 NCHW images."""

    name: str
    labels: np.ndarray
    images: np.ndarray | None = None  # (N, C, H, W) uint8, in memory
    files: list[Path] | None = None  # or image files decoded on demand

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, start: int, stop: int):
        """uint8 images [start, stop): an (n, C, H, W) array, or a list of (C, H, W) arrays of varied sizes."""
        if self.images is not None:
            return self.images[start:stop]
        return [_decode(p) for p in self.files[start:stop]]

    def content_hash(self) -> str:
        h = hashlib.sha256()
        if self.images is not None:
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).data)
        else:
            for p in self.files:
                h.update(os.fsencode(p.name))  # bytes as on disk: names need not be valid UTF-8
                h.update(p.read_bytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def labels_hash(self) -> str:
        return hashlib.sha256(self.labels.astype("<i8").tobytes()).hexdigest()


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, Split]
    source: str
    _hash: str | None = field(default=None, repr=False)
    split: dict | None = None  # how a folder without test/ was split (fraction, seed), for meta

    @property
    def content_hash(self) -> str:
        """sha256 over every split's images and labels (as used, i.e. after --limit)."""
        if self._hash is None:
            h = hashlib.sha256()
            for name, split in self.splits.items():
                h.update(name.encode())
                h.update(split.content_hash().encode())
            self._hash = h.hexdigest()
        return self._hash

    @property
    def slug(self) -> str:
        """The dataset's folder name under features/ and reports/: its name, or folder-<basename>."""
        return dataset_slug(self.name, self.source)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "classes": self.classes,
            "content_sha256": self.content_hash,
            "rows": {k: len(s) for k, s in self.splits.items()},
            "labels_sha256": {k: s.labels_hash() for k, s in self.splits.items()},
            **({"split": self.split} if self.split else {}),
        }


def dataset_slug(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """'fashion-mnist', or 'folder-<basename of DIR>' (safe characters only) for an image folder, so two
    folders never share default store or report paths."""
    if name != "folder" or data_dir is None:
        return name
    base = Path(os.path.abspath(Path(data_dir).expanduser())).name
    base = os.fsencode(base).decode("utf-8", "replace")  # a name that is not UTF-8 still gets a readable slug
    base = re.sub(r"[^\w.-]+", "_", base).strip("._")
    return f"folder-{base or 'images'}"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                 test_fraction: float | None = None) -> Dataset:
    """Read a dataset by name: 'fashion-mnist', 'mnist', 'cifar10' or 'folder'.

    `test_fraction` (folders only): a folder without a `test/` split is split into train and test, class-
    stratified and seeded, with this share held out for testing; None keeps it as one split (a class-folder
    root is then a test set, as `pipeline evaluate` and `predict` read it)."""
    readers = {"fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist, "cifar10": _load_cifar10,
               "folder": _load_folder}
    if name not in readers:
        raise PipelineError(f"unknown dataset {name!r}; choose one of {', '.join(readers)}")
    if limit is not None and limit < 1:
        raise PipelineError(f"--limit must be a positive number of images, not {limit}")
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise PipelineError(f"data directory {data_dir} does not exist (or is not a folder); "
                                f"point --data-dir at the folder that holds the {name} files")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise PipelineError(f"--test-fraction must be between 0 and 1 (the share of a folder held out for "
                            f"testing), not {test_fraction}")
    ds = _load_folder(data_dir, test_fraction) if name == "folder" else readers[name](data_dir)
    if limit is not None:
        for split in ds.splits.values():
            split.labels = split.labels[:limit]
            if split.images is not None:
                split.images = split.images[:limit]
            else:
                split.files = split.files[:limit]
    return ds


# --- IDX (Fashion-MNIST, MNIST) ---------------------------------------------------------------------

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
    return Dataset(name, classes, splits, str(d))


def _load_fashion_mnist(data_dir: Path | None) -> Dataset:
    if data_dir is None:
        data_dir = _default_fashion_mnist_dir()
    return _load_idx_dataset("fashion-mnist", data_dir, "FashionMNIST", FASHION_MNIST_CLASSES)


def _load_mnist(data_dir: Path | None) -> Dataset:
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


# --- CIFAR-10 python batches ------------------------------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, bytes and numpy arrays; nothing executable."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
               # pickle protocol 5 stores arrays as a buffer plus dtype and shape: plain data as well
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise PipelineError(f"missing file {path}; the folder must hold CIFAR-10's python batches "
                            f"(data_batch_1..5, test_batch)") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a pickle, forbidden content
        raise PipelineError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise PipelineError(f"{path}: not a CIFAR-10 python batch (holds {type(d).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_labels(lab, path: Path) -> np.ndarray:
    """'labels' as a flat int64 array, checked before any conversion: nested lists (which a small pickle
    can share to describe an enormous array) or other types are refused without materialising them."""
    if isinstance(lab, np.ndarray):
        if lab.ndim != 1 or lab.dtype.kind not in "iu":
            raise PipelineError(f"{path}: 'labels' must be a flat list of integers (got a {lab.dtype} array "
                                f"of shape {lab.shape})")
        return lab.astype(np.int64)
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not isinstance(lab, (list, tuple)) or not all(is_int(v) for v in lab):
        kind = type(lab).__name__ if not isinstance(lab, (list, tuple)) else \
            f"a list holding {type(next(v for v in lab if not is_int(v))).__name__}"
        raise PipelineError(f"{path}: 'labels' must be a flat list of integers, not {kind}")
    try:
        return np.fromiter((int(v) for v in lab), dtype=np.int64, count=len(lab))
    except OverflowError:
        raise PipelineError(f"{path}: 'labels' holds integers out of range") from None


def _load_cifar10(data_dir: Path | None) -> Dataset:
    if data_dir is None:
        raise PipelineError("cifar10 needs --data-dir: the folder with CIFAR-10's python batches "
                            "(cifar-10-batches-py)")
    d = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    classes = CIFAR10_CLASSES
    if (d / "batches.meta").exists():
        meta = _read_cifar_batch(d / "batches.meta")
        names = meta.get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    splits = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = [], []
        for fname in files:
            b = _read_cifar_batch(d / fname)
            data, lab = b.get("data"), b.get("labels")
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                    or data.shape[1] != 3072 or lab is None:
                raise PipelineError(f"{d / fname}: expected 'data' as N x 3072 uint8 and 'labels'")
            lab = _cifar_labels(lab, d / fname)
            if len(lab) != len(data):
                raise PipelineError(f"{d / fname} has {len(data):,} images but {len(lab):,} labels")
            if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
                raise PipelineError(f"{d / fname}: labels out of range 0..{len(classes) - 1}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        splits[split] = Split(split, np.concatenate(labels), images=np.concatenate(images))
    return Dataset("cifar10", classes, splits, str(d))


# --- image folders ------------------------------------------------------------------------------------

def _load_folder(data_dir: Path | None, test_fraction: float | None = None) -> Dataset:
    """ImageFolder-style: DIR/{train,test}/<class>/<image>, or DIR/<class>/<image>.

    A folder without `test/` is split (class-stratified, seeded: `test_fraction` of each class held out) when
    `test_fraction` is given; without it, DIR/<class>/ is a test set only. Images are ordered round-robin over
    classes (each class sorted by file name), so `--limit N` keeps every class. Every file is opened and
    verified up front, so a bad file fails before any work is done.
    """
    if data_dir is None:
        raise PipelineError("folder needs --data-dir: a folder of class sub-folders of images")
    roots = {s: data_dir / s for s in ("train", "test") if (data_dir / s).is_dir()}
    if not roots:
        roots = {"train" if test_fraction is not None else "test": data_dir}
    first = next(iter(roots.values()))
    classes = sorted(p.name for p in _visible(first) if p.is_dir())
    if not classes:
        raise PipelineError(f"{first}: no class sub-folders; expected {first}/<class>/<image files>")
    per_split = {}
    for split, root in roots.items():
        extra = sorted(p.name for p in _visible(root) if p.is_dir() and p.name not in classes)
        if extra:
            raise PipelineError(f"{root}: class folder(s) {', '.join(extra)} are not in {first}")
        per_class = [class_images(root / c) if (root / c).is_dir() else [] for c in classes]
        if not any(per_class):
            raise PipelineError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                                f"in its class folders")
        per_split[split] = per_class
    split_note = None
    if "test" not in per_split and test_fraction is not None:
        per_split["train"], per_split["test"] = _stratified_split(per_split["train"], classes, test_fraction,
                                                                  first)
        split_note = {"test_fraction": test_fraction, "seed": SPLIT_SEED, "from": "train" if
                      roots.get("train") != data_dir else "the class folders",
                      "method": "per class: a seeded shuffle, the first round(n * fraction) (at least 1) to test"}
    splits = {}
    for split in ("train", "test"):
        if split not in per_split:
            continue
        files, labels = _round_robin(per_split[split])
        for p in files:
            _verify(p)
        splits[split] = Split(split, np.asarray(labels, dtype=np.int64), files=files)
    ds = Dataset("folder", classes, splits, str(data_dir))
    ds.split = split_note
    return ds


SPLIT_SEED = 0


def class_images(folder: Path) -> list[Path]:
    """A class folder's image files, sorted by name: regular files only (a FIFO or a socket would block or
    fail), hidden entries skipped."""
    return sorted(p for p in _visible(folder) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _round_robin(per_class: list[list[Path]]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for i in range(max(map(len, per_class), default=0)):
        for label, fs in enumerate(per_class):
            if i < len(fs):
                files.append(fs[i])
                labels.append(label)
    return files, labels


def _stratified_split(per_class, classes, fraction: float, root: Path):
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for name, fs in zip(classes, per_class):
        if len(fs) == 1:
            raise PipelineError(f"{_show(root / name)}: one image only, too few to split into train and test; "
                                f"add images or give the folder a test/ split")
        order = rng.permutation(len(fs))
        k = min(len(fs) - 1, max(1, round(len(fs) * fraction))) if fs else 0
        test.append(sorted(fs[i] for i in order[:k]))
        train.append(sorted(fs[i] for i in order[k:]))
    return train, test


def _visible(folder: Path) -> list[Path]:
    """A folder's entries less hidden ones (.git, .ipynb_checkpoints, .DS_Store, macOS `._x.jpg`)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


MAX_PIXELS = 64_000_000  # 8000 x 8000: far beyond any photo a CNN sees at 224 px; more is a decompression bomb


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
        raise PipelineError(f"{_show(path)}: image too large (more than {MAX_PIXELS:,} pixels, a possible "
                            f"decompression bomb); downscale it or remove it") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise PipelineError(f"{_show(path)}: unreadable image ({type(e).__name__}: {e}); "
                            f"remove or replace it") from None


def _show(path: Path) -> str:
    """A path fit for a one-line message even when its name is not valid UTF-8."""
    return os.fsdecode(os.fsencode(path)).encode("utf-8", "backslashreplace").decode("utf-8")


def _verify(path: Path) -> None:
    """Up front, cheaply: the header parses, the size is sane, and the file is complete (PNG chunks and
    CRCs; a JPEG ends with its end-of-image marker), so a bad file fails before any work is done."""
    with _guarded(path) as im:
        fmt = im.format
        im.verify()
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))
            if b"\xff\xd9" not in f.read():
                raise PipelineError(f"{_show(path)}: truncated JPEG (no end-of-image marker); remove or "
                                    f"replace it")


def _decode(path: Path) -> np.ndarray:
    """One image file -> uint8 (C, H, W) with C = 1 (grayscale) or 3 (anything else). As a viewer shows it: a
    camera's EXIF orientation applied, transparency composited over white, 16-bit images scaled to 8 bits."""
    from PIL import Image, ImageOps

    with _guarded(path) as im:
        im = ImageOps.exif_transpose(im) or im  # phone photos are often stored sideways
        if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grayscale: scale, do not clip, to 0..255
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            return np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)[None]
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            im = im.convert("L" if _is_gray(rgba) else "RGB")
        return from_pil(im.convert("L" if im.mode in ("L", "1") else "RGB"))


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


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in .gz); for tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


__all__ = ["Dataset", "Split", "load_dataset", "read_idx", "write_idx", "FASHION_MNIST_CLASSES",
           "CIFAR10_CLASSES"]
