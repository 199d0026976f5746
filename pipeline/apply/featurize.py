"""Features for new images, made again exactly as a saved model's were: its card's recipe (raw pixels' size and
channels, or the store's backbone, weights (sha256 checked), layer, image size, preprocessing, and where this
machine runs them, the store's engine and precision). Shared by `predict` and `evaluate`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.console import progress_bar, stderr
from pipeline.data.domain import domain_for, match
from pipeline.data.images import IMAGE_EXTENSIONS, decode_image, show_path, verify_image
from pipeline.embed.backbones import build_backbone
from pipeline.embed.engines import make_engine, prefetch
from pipeline.embed.int8 import Calibration
from pipeline.errors import PipelineError
from pipeline.hardware import resolve_device
from pipeline.store.featuresets import raw_pixels

Log = Callable[[str], None]


# --- images -------------------------------------------------------------------------------------------

def collect_images(inputs) -> list[Path]:
    """Image files named, or found (recursively, hidden entries skipped) under folders named; each verified
    up front, so a bad file is one line before any work."""
    files: list[Path] = []
    for i in inputs:
        p = Path(i).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise PipelineError(f"{show_path(p)}: no such image or folder")
    if not files:
        raise PipelineError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    for f in files:
        verify_image(f)
    return files


def _decode_batches(files: list[Path], batch: int, transform=None):
    for a in range(0, len(files), batch):
        imgs = [decode_image(f) for f in files[a:a + batch]]
        yield [transform(x) for x in imgs] if transform else imgs


# --- features from a recipe -----------------------------------------------------------------------------

def _weights_arg(recipe: dict, weights: str | None) -> str:
    """The --weights value that rebuilds the recipe's weights: a user's PATH, the shipped/hub ImageNet file,
    random init, or the file the store was made from; its sha256 is checked against the recipe's after."""
    w = recipe.get("weights") or {}
    if weights:
        return weights
    wid = str(w.get("id", ""))
    if wid.startswith("none"):
        return "none"
    if wid.startswith("file:"):
        f = w.get("file")
        if f and Path(f).is_file():
            return f
        raise PipelineError(f"this model's features came from {recipe['backbone']} weights in {f} (sha256 "
                            f"{str(w.get('sha256'))[:12]}), which is not here; pass --weights PATH to that file")
    return "imagenet"


def build_for(recipe: dict, weights: str | None = None):
    """The backbone the recipe names, its weights checked against the recipe's sha256."""
    layer = recipe.get("layer") or ""
    layer = None if layer.startswith("input of ") else layer.split(" ")[0] or None
    try:
        bb = build_backbone(recipe["backbone"], _weights_arg(recipe, weights), layer, int(recipe["image_size"]))
    except PipelineError as e:
        raise PipelineError(f"this model needs {recipe['backbone']} features, but its weights cannot be had: "
                            f"{e}") from None
    want, got = (recipe.get("weights") or {}).get("sha256"), bb.weights.get("sha256")
    if want != got:
        raise PipelineError(f"the {recipe['backbone']} weights found (sha256 {str(got)[:12]}) are not the ones "
                            f"this model's features were made with (sha256 {str(want)[:12]}); pass --weights PATH "
                            f"to the right file")
    if recipe.get("preprocessing") and bb.describe_preprocessing() != recipe["preprocessing"]:
        raise PipelineError(f"{recipe['backbone']}'s preprocessing in this version differs from the one the model "
                            f"was trained on; re-extract and retrain with this version")
    return bb


def featurize(recipe: dict, files: list[Path], *, transform=None, device: str = "auto", weights: str | None = None,
              batch_size: int = 64, backbone=None, progress: bool | None = None, log: Log = stderr) -> np.ndarray:
    """(len(files), D) features made as the recipe says; `transform` maps each decoded image first."""
    with progress_bar(len(files), progress=progress, unit="img", desc=_what(recipe)) as bar:
        if recipe["kind"] == "raw":
            size = recipe.get("size")
            if size is None:
                raise PipelineError("this raw-pixel model was trained on non-square images; it cannot take new ones")
            out = []
            for imgs in _decode_batches(files, 256, transform):
                out.append(raw_pixels(imgs, size, int(recipe["channels"])))
                bar.update(len(imgs))
            return np.concatenate(out)
        bb = backbone or build_for(recipe, weights)
        eng = _engine_for(recipe, bb, device, log)
        out = []
        for feats in eng.map(prefetch(_decode_batches(files, batch_size, transform))):
            out.append(feats)
            bar.update(len(feats))
        return np.concatenate(out).astype(np.float32, copy=False)


def _engine_for(recipe, bb, device, log):
    """The store's engine and precision where this machine runs them (the same features), else auto."""
    rec_dev, here = recipe.get("device"), resolve_device(device).type
    if rec_dev not in (None, here):
        log(f"the store was made on {rec_dev}, this runs on {here}: engine and precision chosen automatically "
            f"(features equal to the store's within that precision)")
    elif recipe.get("engine") and recipe.get("precision"):
        try:
            cal = recipe.get("calibration")  # int8: the store's calibrated model, from the cache
            return make_engine(bb, device, recipe["precision"], recipe["engine"],
                               calibration=Calibration.described(cal) if cal else None)
        except PipelineError as e:
            log(f"the store's engine ({recipe['engine']} {recipe['precision']}) is not available here ({e}); "
                f"using the automatic choice")
    return make_engine(bb, device)


def _what(recipe: dict) -> str:
    if recipe["kind"] == "raw":
        return f"raw pixels {recipe.get('size')}px"
    return f"{recipe['backbone']} {recipe.get('image_size')}px"


def matcher(dataset: str):
    """Each photo mapped toward the training images' look (`--match-domain`)."""
    dom = domain_for(dataset)
    return lambda img: match(img, dom)
