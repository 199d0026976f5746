"""Image folders, ImageFolder-style: DIR/{train,test}/<class>/<images>, or DIR/<class>/<images> (then split, or
read as a test set only). Every file is verified up front, so a bad one fails before any work is done."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.data.dataset import SPLIT_SEED, Dataset, Split, stratified_holdout
from pipeline.data.images import IMAGE_EXTENSIONS, class_images, show_path, verify_image, visible
from pipeline.errors import PipelineError


def load_folder(data_dir: Path | None, test_fraction: float | None = None, verify: bool = True) -> Dataset:
    """ImageFolder-style: DIR/{train,test}/<class>/<image>, or DIR/<class>/<image>.

    A folder without `test/` is split (class-stratified, seeded: `test_fraction` of each class held out) when
    `test_fraction` is given; without it, DIR/<class>/ is a test set only. Images are ordered round-robin over
    classes (each class sorted by file name), so `--limit N` keeps every class. Every file is opened and
    verified up front, so a bad file fails before any work is done.
    """
    if data_dir is None:
        raise PipelineError("folder needs --data-dir: a folder of class sub-folders of images")
    data_dir = Path(os.path.abspath(data_dir))  # recorded as the source, and its files: found again from anywhere
    roots = {s: data_dir / s for s in ("train", "test") if (data_dir / s).is_dir()}
    if not roots:
        roots = {"train" if test_fraction is not None else "test": data_dir}
    first = next(iter(roots.values()))
    classes = sorted(p.name for p in visible(first) if p.is_dir())
    if not classes:
        raise PipelineError(f"{first}: no class sub-folders; expected {first}/<class>/<image files>")
    per_split = {}
    for split, root in roots.items():
        extra = sorted(p.name for p in visible(root) if p.is_dir() and p.name not in classes)
        if extra:
            raise PipelineError(f"{root}: class folder(s) {', '.join(extra)} are not in {first}")
        per_class = [class_images(root / c) if (root / c).is_dir() else [] for c in classes]
        if not any(per_class):
            raise PipelineError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                                f"in its class folders")
        per_split[split] = per_class
    split_note = None
    if "test" not in per_split and test_fraction is not None:
        per_split["train"], per_split["test"] = _split(per_split["train"], classes, test_fraction, first)
        split_note = {"test_fraction": test_fraction, "seed": SPLIT_SEED, "from": "train" if
                      roots.get("train") != data_dir else "the class folders",
                      "method": "per class: a seeded shuffle, the first round(n * fraction) (at least 1) to test"}
    splits = {}
    for split in ("train", "test"):
        if split not in per_split:
            continue
        files, labels = _round_robin(per_split[split])
        for p in files if verify else ():  # `verify=False`: a folder read again for its paths (checked before)
            verify_image(p)
        splits[split] = Split(split, np.asarray(labels, dtype=np.int64), files=files)
    ds = Dataset("folder", classes, splits, str(data_dir))
    ds.split = split_note
    return ds


def _round_robin(per_class: list[list[Path]]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for i in range(max(map(len, per_class), default=0)):
        for label, fs in enumerate(per_class):
            if i < len(fs):
                files.append(fs[i])
                labels.append(label)
    return files, labels


def _split(per_class: list[list[Path]], classes: list[str], fraction: float, root: Path):
    """(train, test) files per class: `fraction` of each class (at least one, never all) held out."""
    def refuse(c, n, k):
        raise PipelineError(f"{show_path(root / classes[c])}: one image only, too few to split into train and "
                            f"test; add images or give the folder a test/ split")

    files = [f for fs in per_class for f in fs]
    y = np.repeat(np.arange(len(per_class)), [len(fs) for fs in per_class])
    keep, held = stratified_holdout(y, fraction, SPLIT_SEED, at_least_one=True, refuse=refuse)

    def by_class(rows):
        return [[files[i] for i in rows if y[i] == c] for c in range(len(per_class))]

    return by_class(keep), by_class(held)


def refuse_output_inside(out, folder, what: str = "--out", fix: str = "choose an --out outside it") -> None:
    """An output folder equal to or inside an image folder would put pipeline's files among the user's images
    and read them back as classes: refused before any work. `folder` None: not an image folder, nothing to
    check."""
    if out is None or folder is None:
        return
    o, f = os.path.realpath(Path(out).expanduser()), os.path.realpath(Path(folder).expanduser())
    if o == f or o.startswith(f.rstrip(os.sep) + os.sep):
        raise PipelineError(f"{what} {show_path(Path(out))} is inside the image folder {show_path(Path(folder))}: "
                            f"its outputs would be read back as classes; {fix}")
