"""Feature sets: what the classifiers and maps compare. `raw` (pixels / 255, from the dataset) or a feature
store (embeddings), loaded as a `FeatureSet` with the recipe that made it, so the same features can be made
again for new images (`pipeline predict`, `pipeline evaluate`).

Raw pixels of an array dataset are its images as they are (Fashion-MNIST: 28 x 28 grayscale); of an image
folder, every image resized to a fixed small square (`raw_size`, default 32; grayscale when every image is,
else RGB), flattened, 0..1.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.console import progress_bar, split_names
from pipeline.data import DATASET, TEST_FRACTION, dataset_slug, limit_suffix, load_dataset
from pipeline.data.images import from_pil, show_path, to_pil
from pipeline.data.load import check_limit
from pipeline.errors import PipelineError
from pipeline.files import named, slug
from pipeline.store.format import FEATURES_ROOT, Features, load_features, store_path

ALIASES = {"resnet": "resnet18"}
RAW_SIZE = 32  # a folder's raw pixels: images resized to this square
RAW_SIZE_MAX = 1024  # the largest --raw-size (and raw-pixel image side a model card may name)
RAW_RESIZE = "PIL bilinear (antialiased), aspect ratio not kept (no crop), as the backbones see images"


def labels_sha256(y_train, y_test) -> str:
    """What ties records to their data: results made from other labels are never mixed in one table."""
    h = hashlib.sha256()
    for y in (y_train, y_test):
        h.update(np.asarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass(kw_only=True)
class FeatureSet(Features):
    """Features as a study compares them (raw pixels, or a store's embeddings): the arrays and meta, plus the
    set's name, the class names and the dataset."""
    name: str
    classes: list[str]
    dataset: str

    @property
    def image_folder(self) -> str | None:
        """The image folder these features were made from (None for other datasets): no output goes in it."""
        return self.meta.get("dataset", {}).get("source") if self.dataset == "folder" else None

    @property
    def labels_sha256(self) -> str:
        return labels_sha256(self.y_train, self.y_test)

    @property
    def fingerprint(self) -> str:
        """What results and maps were computed from: the store's config (or the raw dataset's content), the
        rows and the labels. Equal fingerprints mean a cached output can be reused."""
        src = self.meta.get("config_hash") or self.meta.get("dataset", {}).get("content_sha256")
        key = [self.name, src, len(self.y_train), len(self.y_test), self.labels_sha256]
        raw = self.meta.get("raw", {})
        if raw.get("resize"):  # a folder's raw pixels depend on the size they were resized to
            key.append([raw["size"], raw["channels"]])
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]

    @property
    def recipe(self) -> dict:
        """How to make these features again from an image: raw pixels' size and channels, or the backbone,
        weights, layer, image size and preprocessing of the store (from its meta)."""
        if self.name == "raw":
            return {"kind": "raw", **self.meta["raw"]}
        m = self.meta
        return {"kind": "embeddings", "store": m.get("path"), "config_hash": m.get("config_hash"),
                "backbone": m["backbone"]["name"], "weights": m["backbone"].get("weights", {}),
                "layer": m["backbone"].get("layer"), "image_size": m.get("image_size"),
                "preprocessing": m.get("preprocessing"), "engine": m.get("engine", {}).get("engine"),
                "precision": m.get("precision"), "device": m.get("device", {}).get("type"),
                **({"calibration": m["engine"]["int8"]["calibration"]} if "int8" in m.get("engine", {}) else {}),
                "feature_dim": m["backbone"].get("feature_dim")}


def raw_pixels(images, size: int | None, channels: int) -> np.ndarray:
    """uint8 images ((N, C, H, W) array, or a list of (C, H, W) of varied sizes) -> (N, channels*size*size)
    float32 in 0..1: converted to `channels` (PIL's ITU-R 601 luma for grayscale) and resized to `size`
    (None: as they are, which must then be one size)."""
    from PIL import Image

    rows = []
    for img in images:
        c, h, w = img.shape
        if (c == channels and (size is None or (h, w) == (size, size))):
            rows.append(np.asarray(img, dtype=np.uint8).reshape(-1))
            continue
        im = to_pil(img).convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        rows.append(from_pil(im).reshape(-1))
    if not rows:
        return np.empty((0, channels * (size or 0) ** 2), np.float32)
    return np.stack(rows).astype(np.float32) / 255


def _raw_folder(ds, raw_size: int, progress: bool | None = None) -> tuple[dict, dict]:
    """A folder's raw pixels: every image decoded once, resized at its own channels, then grayscale kept
    only when every image is grayscale."""
    total = sum(len(s) for s in ds.splits.values())
    small = {}
    with progress_bar(total, progress=progress, unit="img", desc=f"raw pixels {raw_size}px") as bar:
        for name, split in ds.splits.items():
            small[name] = []
            for a in range(0, len(split), 256):
                for img in split.batch(a, min(a + 256, len(split))):
                    small[name].append(raw_pixels([img], raw_size, img.shape[0]).reshape(img.shape[0], -1))
                    bar.update(1)
    channels = 1 if all(x.shape[0] == 1 for xs in small.values() for x in xs) else 3
    spec = {"size": raw_size, "channels": channels, "resize": RAW_RESIZE, "scale": "x / 255, flattened (C, H, W)"}
    parts = {n: np.stack([np.repeat(x, channels // x.shape[0], axis=0).reshape(-1) for x in xs])
             if xs else np.empty((0, channels * raw_size * raw_size), np.float32) for n, xs in small.items()}
    return parts, spec


def load_feature_sets(specs: str, dataset: str = DATASET, data_dir=None, limit: int | None = None,
                      raw_size: int = RAW_SIZE, test_fraction: float | None = TEST_FRACTION) -> list[FeatureSet]:
    """`--features raw,efficientnet_lite0,PATH`: each comma-separated name as `load_feature_set` reads it."""
    sets = [load_feature_set(f, dataset, data_dir, limit, raw_size=raw_size, test_fraction=test_fraction)
            for f in split_names(specs)]
    if not sets:
        raise PipelineError("--features names no feature set; e.g. --features raw,resnet18")
    return distinct_names(sets)


def _recipe(fs: FeatureSet) -> dict[str, str]:
    """What may tell two stores of one backbone apart, each as it reads in a feature set's name."""
    m, bb = fs.meta, fs.meta.get("backbone") or {}
    weights = (bb.get("weights") or {}) if isinstance(bb, dict) else {}
    return {"image_size": f"{m.get('image_size')} px", "precision": str(m.get("precision")),
            "layer": f"layer {bb.get('layer')}" if isinstance(bb, dict) else "",
            "weights": f"weights {str(weights.get('sha256') or weights.get('id'))[:8]}"}


def distinct_names(sets: list[FeatureSet]) -> list[FeatureSet]:
    """Feature sets of one backbone named apart by what differs in their recipes (`resnet18 (32 px)` and
    `resnet18 (64 px)`), so that each has its own records and models; two of one recipe are refused."""
    for name in {fs.name for fs in sets}:
        same = [fs for fs in sets if fs.name == name]
        if len(same) < 2:
            continue
        recipes = [_recipe(fs) for fs in same]
        differ = [k for k in recipes[0] if len({r[k] for r in recipes}) > 1]
        if not differ or len({tuple(r[k] for k in differ) for r in recipes}) < len(same):
            raise PipelineError(f"{' and '.join(str(fs.meta.get('path', fs.name)) for fs in same)} hold {name} "
                                f"features of one recipe; pass one of them")
        for fs, r in zip(same, recipes):
            fs.name = f"{name} ({', '.join(r[k] for k in differ)})"
    stems = [slug(fs.name) for fs in sets]
    if len(set(stems)) < len(stems):
        twins = [fs.name for fs, s in zip(sets, stems) if stems.count(s) > 1]
        raise PipelineError(f"feature sets {', '.join(map(repr, twins))} would share their records' file names; "
                            f"pass one of them")
    return sets


def load_feature_set(spec: str, dataset: str = DATASET, data_dir=None, limit: int | None = None,
                     features_root: Path = FEATURES_ROOT, raw_size: int = RAW_SIZE,
                     test_fraction: float | None = TEST_FRACTION) -> FeatureSet:
    """'raw' (pixels / 255 from the dataset), a backbone name (its store under features/), or a store path."""
    check_limit(limit)  # a store is cut by it too: 0 or -3 would slice it silently
    if spec == "raw":
        ds = load_dataset(dataset, data_dir, limit, test_fraction=test_fraction if dataset == "folder" else None)
        for s in ("train", "test"):
            if s not in ds.splits:
                raise PipelineError(f"--features raw needs a dataset with train and test images; {ds.source} "
                                    f"has {', '.join(ds.splits)} only")
        if all(split.images is not None for split in ds.splits.values()):
            c, h, w = ds.splits["train"].images.shape[1:]
            parts = {s: ds.splits[s].images.reshape(len(ds.splits[s]), -1).astype(np.float32) / 255
                     for s in ("train", "test")}
            raw = {"size": int(h) if h == w else None, "channels": int(c), "resize": None,
                   "scale": "x / 255, flattened (C, H, W)", "image_shape": [int(c), int(h), int(w)]}
        else:
            if not 1 <= raw_size <= RAW_SIZE_MAX:
                raise PipelineError(f"--raw-size must be a number of pixels in 1..{RAW_SIZE_MAX}, not {raw_size}")
            parts, raw = _raw_folder(ds, raw_size)
        return FeatureSet(parts["train"], ds.splits["train"].labels, parts["test"], ds.splits["test"].labels,
                          {"dataset": ds.describe(), "raw": raw}, name="raw", classes=ds.classes, dataset=dataset)
    path = named(spec)
    name = ALIASES.get(spec, spec)
    if not path.exists():  # a backbone name: `pipeline run --limit N`'s own store first, then the full one
        slug_ = dataset_slug(dataset, data_dir)
        tried = [store_path(slug_, name, limit_suffix(limit), root=features_root)] if limit else []
        tried.append(store_path(slug_, name, root=features_root))
        path = next((t for t in tried if t.exists()), None)
        if path is None:
            where = f" --data-dir {data_dir}" if dataset == "folder" and data_dir else ""
            first = f" --limit {limit}" if limit else ""
            raise PipelineError(f"no feature store for {spec!r} at {' or '.join(map(str, tried))}; run `pipeline "
                                f"extract --dataset {dataset}{where} --backbone {name}{first}` first, or pass a "
                                f"store path")
    f = load_features(path)
    made_from = f.meta.get("dataset", {}).get("name")
    if made_from != dataset:
        raise PipelineError(f"{path} holds {made_from} features, not {dataset}; pass --dataset {made_from} "
                            f"or another store")
    source = f.meta.get("dataset", {}).get("source")
    if dataset == "folder" and data_dir is not None and source is not None \
            and os.path.abspath(source) != os.path.abspath(Path(data_dir).expanduser()):
        raise PipelineError(f"{path} holds features of the folder {show_path(Path(source))}, not of "
                            f"{show_path(Path(data_dir))}; extract this folder into its own store (--out) and pass its "
                            f"path")
    sl = slice(None, limit)
    fs = FeatureSet(np.asarray(f.X_train[sl]), np.asarray(f.y_train[sl]), np.asarray(f.X_test[sl]),
                    np.asarray(f.y_test[sl]), {**f.meta, "path": str(path)},
                    name=f.meta.get("backbone", {}).get("name", path.name), classes=f.meta["dataset"]["classes"],
                    dataset=dataset)
    for split, X in (("X_train", fs.X_train), ("X_test", fs.X_test)):
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise PipelineError(f"{path}/{split}.npy has non-finite values (row {int(np.argmax(bad))} and "
                                f"{int(bad.sum()) - 1} more); re-extract it, e.g. with --precision fp32")
    return fs


def source_images(fs: FeatureSet):
    """The dataset a feature set was made from, read again (its images: thumbnails, contact sheets, file names)
    and cut to the feature set's rows; refused in one line if its images or labels are no longer the ones the
    features were made from (a file added to a class folder would shift every later row's name)."""
    from pipeline.data import Dataset

    d = fs.meta.get("dataset", {})
    ds: Dataset = load_dataset(fs.dataset, d.get("source"), test_fraction=(d.get("split") or {}).get("test_fraction"),
                               verify=False)  # verified when the features were made; checked below
    rows = d.get("rows") if isinstance(d.get("rows"), dict) else {}
    for name, y in (("train", fs.y_train), ("test", fs.y_test)):
        if name not in ds.splits and len(y):
            raise PipelineError(f"{d.get('source')}: no {name} images any more; the features of {fs.name} "
                                f"were made from a dataset that has changed")
    _cut(ds, {name: rows.get(name, len(split)) for name, split in ds.splits.items()})  # the store's rows
    content = d.get("content_sha256")
    if isinstance(content, str) and ds.content_hash != content:
        raise PipelineError(f"{ds.source}: its images have changed since {fs.name}'s features were made (content "
                            f"fingerprint differs), so its rows can no longer be named; extract it again")
    _cut(ds, {"train": len(fs.y_train), "test": len(fs.y_test)})  # the feature set's rows
    for name, y in (("train", fs.y_train), ("test", fs.y_test)):
        if name in ds.splits and not np.array_equal(ds.splits[name].labels, y):
            raise PipelineError(f"{ds.source}: its {name} images are no longer the ones {fs.name}'s features "
                                f"were made from (labels differ); re-extract, or point --data-dir at the same data")
    return ds


def _cut(ds, rows: dict[str, int]) -> None:
    """Each split of `ds` named in `rows` cut to its first `rows[name]` rows (its fingerprint made again)."""
    for name, n in rows.items():
        split = ds.splits.get(name)
        if split is None:
            continue
        split.labels = split.labels[:n]
        if split.images is not None:
            split.images = split.images[:n]
        else:
            split.files = split.files[:n]
    ds._hash = None


def check_comparable(sets: list[FeatureSet]) -> None:
    """Feature sets compared in one table must describe the same images: same dataset, rows and labels."""
    ref = sets[0]
    for fs in sets[1:]:
        if (fs.dataset, len(fs.y_train), len(fs.y_test)) != (ref.dataset, len(ref.y_train), len(ref.y_test)) \
                or fs.labels_sha256 != ref.labels_sha256:
            raise PipelineError(
                f"{fs.name} ({fs.dataset}, {len(fs.y_train):,}/{len(fs.y_test):,} rows) does not match "
                f"{ref.name} ({ref.dataset}, {len(ref.y_train):,}/{len(ref.y_test):,} rows) or its labels "
                f"differ: they were made from different data; re-extract with the same --dataset, --data-dir, "
                f"--limit and --test-fraction")
