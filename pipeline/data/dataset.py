"""What a reader gives the later stages: a `Dataset` of named `Split`s, each uint8 NCHW images (or image files
decoded on demand) with int64 labels, its content hash, and the slug its stores and reports are named by.
Knows nothing of models. Also the one seeded, class-stratified holdout that splits an image folder into train
and test and a training split into training and validation.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.images import decode_image

DATASET = "fashion-mnist"  # what every command reads unless --dataset says otherwise
TEST_FRACTION = 0.2  # an image folder without test/: this share of each class is held out for testing
SPLIT_SEED = 0


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
        return [decode_image(p) for p in self.files[start:stop]]

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
        """The dataset's folder name under features/ and reports/: its name, or folder-<basename>-<hash>."""
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
    """'fashion-mnist', or 'folder-<basename of DIR>-<8 hex digits>' for an image folder: the name in safe
    characters, then a short hash of the folder's resolved path, so two folders never share default store or
    report paths (not `p1/my photos` and `p2/my_photos`, nor two folders named alike in two places)."""
    if name != "folder" or data_dir is None:
        return name
    resolved = os.path.realpath(Path(data_dir).expanduser())
    base = os.fsencode(Path(resolved).name).decode("utf-8", "replace")  # a name not in UTF-8 gets a readable slug
    base = re.sub(r"[^\w.-]+", "_", base).strip("._")
    where = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:8]
    return f"folder-{base or 'images'}-{where}"


def limit_suffix(limit: int | None) -> str:
    """'-first<N>' for the first N images of each split (--limit N), '' for all: what a cut run's store and
    report folder add to their names, so that they never collide with the full run's."""
    return f"-first{limit}" if limit else ""


def stratified_holdout(y: np.ndarray, fraction: float, seed: int = 0, at_least_one: bool = False,
                       refuse: Callable[[int, int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) row indices, sorted: each class's rows (classes 0, 1, ... in turn) shuffled by one seeded
    generator, and the first round(n * fraction) of them held out; with `at_least_one`, at least 1 and at most
    n - 1. `refuse(class, n, k)` is called (to raise) for a class whose split would leave one side empty."""
    rng = np.random.default_rng(seed)
    kept, held = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for c in range(int(y.max()) + 1 if len(y) else 0):
        idx = np.flatnonzero(y == c)
        if len(idx) == 0:
            continue
        k = int(round(len(idx) * fraction))
        if at_least_one:
            k = min(len(idx) - 1, max(1, k))
        if refuse is not None and (k < 1 or k >= len(idx)):
            refuse(c, len(idx), k)
        idx = rng.permutation(idx)
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))
