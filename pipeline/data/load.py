"""`load_dataset(name, ...)`: a dataset by name, from its reader, checked and cut to `--limit`."""
from __future__ import annotations

import numbers
import os
from pathlib import Path

from pipeline.console import check_names
from pipeline.data.cifar import load_cifar10
from pipeline.data.dataset import Dataset
from pipeline.data.folder import load_folder
from pipeline.data.idx import load_fashion_mnist, load_mnist
from pipeline.errors import PipelineError

READERS = {"fashion-mnist": load_fashion_mnist, "mnist": load_mnist, "cifar10": load_cifar10,
           "folder": load_folder}
DATASETS = tuple(READERS)  # what --dataset takes


def check_limit(limit: int | None) -> None:
    """--limit: None (every image) or a positive number of images per split."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise PipelineError(f"--limit must be a positive number of images, not {limit}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                 test_fraction: float | None = None, verify: bool = True) -> Dataset:
    """Read a dataset by name: 'fashion-mnist', 'mnist', 'cifar10' or 'folder'.

    `test_fraction` (folders only): a folder without a `test/` split is split into train and test, class-
    stratified and seeded, with this share held out for testing; None keeps it as one split (a class-folder
    root is then a test set, as `pipeline evaluate` and `predict` read it). `verify=False` skips an image
    folder's up-front check of every file (for a folder already read once, when only its paths are needed)."""
    check_names("dataset", [name], READERS)
    check_limit(limit)
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise PipelineError(f"data directory {data_dir} does not exist (or is not a folder); "
                                f"point --data-dir at the folder that holds the {name} files")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise PipelineError(f"--test-fraction must be between 0 and 1 (the share of a folder held out for "
                            f"testing), not {test_fraction}")
    ds = load_folder(data_dir, test_fraction, verify) if name == "folder" else READERS[name](data_dir)
    if limit is not None:
        for split in ds.splits.values():
            split.labels = split.labels[:limit]
            if split.images is not None:
                split.images = split.images[:limit]
            else:
                split.files = split.files[:limit]
    return ds
