"""New images through saved models. `predict`: images or a folder -> a CSV of predicted classes with top-k
scores. `evaluate`: the "in the wild" test, a folder of class sub-folders scored by every saved model of a
study, its numbers added to the study's records (and, with `match_domain`, the same after mapping each photo
toward the training images' look).

Features are made again exactly as the model's were (its card's recipe: raw pixels' size and channels, or the
store's backbone, weights (sha256 checked), layer, image size and preprocessing), once per recipe.
"""
from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

Log = Callable[[str], None]


def _stderr(m: str) -> None:
    print(m, file=sys.stderr)


# --- images -------------------------------------------------------------------------------------------

def collect_images(inputs) -> list[Path]:
    """Image files named, or found (recursively, hidden entries skipped) under folders named; each verified
    up front, so a bad file is one line before any work."""
    from pipeline.datasets import IMAGE_EXTENSIONS, _show, _verify

    files: list[Path] = []
    for i in inputs:
        p = Path(i).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise PipelineError(f"{_show(p)}: no such image or folder")
    if not files:
        raise PipelineError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    for f in files:
        _verify(f)
    return files


def _decode_batches(files: list[Path], batch: int, transform=None):
    from pipeline.datasets import _decode

    for a in range(0, len(files), batch):
        imgs = [_decode(f) for f in files[a:a + batch]]
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
    from pipeline.backbones import build_backbone

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
              batch_size: int = 64, backbone=None, progress: bool | None = None, log: Log = _stderr) -> np.ndarray:
    """(len(files), D) features made as the recipe says; `transform` maps each decoded image first."""
    from tqdm.auto import tqdm

    from pipeline.featuresets import raw_pixels

    bar = tqdm(total=len(files), unit="img", file=sys.stderr, dynamic_ncols=True, desc=_what(recipe),
               disable=(not progress) if progress is not None else None)
    with bar:
        if recipe["kind"] == "raw":
            size = recipe.get("size")
            if size is None:
                raise PipelineError("this raw-pixel model was trained on non-square images; it cannot take new ones")
            out = []
            for imgs in _decode_batches(files, 256, transform):
                out.append(raw_pixels(imgs, size, int(recipe["channels"])))
                bar.update(len(imgs))
            return np.concatenate(out)
        from pipeline.extract import prefetch

        bb = backbone or build_for(recipe, weights)
        eng = _engine_for(recipe, bb, device, log)
        out = []
        for feats in eng.map(prefetch(_decode_batches(files, batch_size, transform))):
            out.append(feats)
            bar.update(len(feats))
        return np.concatenate(out).astype(np.float32, copy=False)


def _engine_for(recipe, bb, device, log):
    """The store's engine and precision where this machine runs them (the same features), else auto."""
    from pipeline.compute import resolve_device
    from pipeline.engines import make_engine

    rec_dev, here = recipe.get("device"), resolve_device(device).type
    if rec_dev not in (None, here):
        log(f"the store was made on {rec_dev}, this runs on {here}: engine and precision chosen automatically "
            f"(features equal to the store's within that precision)")
    elif recipe.get("engine") and recipe.get("precision"):
        try:
            return make_engine(bb, device, recipe["precision"], recipe["engine"])
        except PipelineError as e:
            log(f"the store's engine ({recipe['engine']} {recipe['precision']}) is not available here ({e}); "
                f"using the automatic choice")
    return make_engine(bb, device)


def _what(recipe: dict) -> str:
    if recipe["kind"] == "raw":
        return f"raw pixels {recipe.get('size')}px"
    return f"{recipe['backbone']} {recipe.get('image_size')}px"


# --- predict ------------------------------------------------------------------------------------------

def predict(model: str | Path, inputs, out: str | Path | None = "predictions.csv", top_k: int = 3,
            device: str = "auto", weights: str | None = None, match_domain: bool = False,
            log: Log = _stderr) -> list[dict]:
    """Predict every image with a saved model; write the CSV (atomically) when `out` is given."""
    from pipeline.datasets import _show
    from pipeline.models import load_model
    from pipeline.store import atomic_write

    if top_k < 1:
        raise PipelineError(f"--top-k must be at least 1, not {top_k}")
    est, card = load_model(model)
    transform = _matcher(card["dataset"]) if match_domain else None
    files = collect_images(inputs)
    X = featurize(card["features"], files, transform=transform, device=device, weights=weights, log=log)
    pred = np.asarray(est.predict(X))
    kind, scores = _scores(est, X)
    classes = [_show(c) for c in card["classes"]]  # a class folder's name need not be valid UTF-8
    columns = np.asarray(est.classes_)  # the score columns: only classes the model saw in training
    k = min(top_k, len(columns))
    rows = []
    for f, p, s in zip(files, pred, scores):
        top = np.argsort(-s, kind="stable")[:k]
        rows.append({"path": _show(f), "predicted": classes[int(p)], "score_kind": kind,
                     **{f"top{i + 1}": classes[int(columns[j])] for i, j in enumerate(top)},
                     **{f"top{i + 1}_score": float(s[j]) for i, j in enumerate(top)}})
    if out is not None:
        cols = ["path", "predicted", "score_kind"] + [c for i in range(k) for c in (f"top{i + 1}", f"top{i + 1}_score")]
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.6g}" if c.endswith("_score") else r[c]) for c in cols})
        atomic_write(out, buf.getvalue())
    return rows


def _scores(est, X) -> tuple[str, np.ndarray]:
    """Class probabilities where the model has them, else its decision scores (one column per class)."""
    from pipeline.models import _has

    if _has(est, "predict_proba"):
        return "probability", np.asarray(est.predict_proba(X))
    d = np.asarray(est.decision_function(X))
    if d.ndim == 1:  # two classes: one score, for the second of est.classes_
        d = np.stack([-d, d], axis=1)
    return "decision", d


def _matcher(dataset: str):
    from pipeline.domain import domain_for, match

    dom = domain_for(dataset)
    return lambda img: match(img, dom)


# --- evaluate (in the wild) ------------------------------------------------------------------------------

def _key(name: str) -> str:
    """Class names compared case-, space-, underscore-, hyphen- and slash-insensitively."""
    return re.sub(r"[\s_/\\-]+", "", name).casefold()


def wild_folder(folder: str | Path, classes: list[str]) -> tuple[list[Path], np.ndarray, dict[str, str]]:
    """DIR/<class>/<images> -> files, labels (indices into `classes`), {folder name: class}."""
    from pipeline.datasets import _show, _verify, _visible, class_images

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PipelineError(f"--folder {folder}: not a folder; expected {folder}/<class>/<images>")
    by_key = {_key(c): i for i, c in enumerate(classes)}
    files, labels, names = [], [], {}
    for sub in sorted(p for p in _visible(folder) if p.is_dir()):
        i = by_key.get(_key(sub.name))
        if i is None:
            raise PipelineError(f"{_show(sub)}: matches no class of this study; its classes are "
                                f"{', '.join(classes)} (case, spaces, _, - and / do not matter)")
        if classes[i] in names.values():
            raise PipelineError(f"{_show(sub)}: a second folder for class {classes[i]!r}; merge them")
        names[sub.name] = classes[i]
        imgs = class_images(sub)
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise PipelineError(f"{folder}: no images in class sub-folders; expected {folder}/<class>/<images>")
    for f in files:
        _verify(f)
    return files, np.asarray(labels, dtype=np.int64), names


WILD_FIELDS = ("accuracy", "macro_f1", "n", "confusion_matrix")


def evaluate(out: str | Path, folder: str | Path, match_domain: bool = False, device: str = "auto",
             weights: str | None = None, log: Log = _stderr, skip_done: bool = False) -> list[dict] | None:
    """Score every saved model of `out` on the wild folder; add wild_* fields to their records (and
    wild_matched_* with `match_domain`); returns the updated records. With `skip_done` (`pipeline run --wild`),
    returns None without work when every saved model already has numbers for this folder's current content
    and this domain matching."""
    from pipeline.classify import read_results, write_results
    from pipeline.models import has_model, load_model, model_file
    from pipeline.store import folder_lock

    out = Path(out)
    with folder_lock(out, "pipeline evaluate"):
        records = read_results(out)
        have = [r for r in records if has_model(out, r["feature_set"], r["classifier"])
                and r["classifier"] != "finetune"]  # fine-tuned networks take images, not features
        if not have:
            raise PipelineError(f"no saved models in {out}/models; run `pipeline run` or `pipeline classify` "
                                f"with --out {out} first")
        classes = have[0]["classes"]
        matcher = _matcher(have[0]["dataset"]) if match_domain else None  # refused before any work
        files, y, names = wild_folder(folder, classes)
        digest = _content_hash(files, y)
        if skip_done and all(r.get("wild_source", {}).get("content_sha256") == digest
                             and bool(r["wild_source"].get("match_domain")) == match_domain for r in have):
            return None
        log(f"in the wild: {len(files):,} images of {len(names)} classes from {folder} "
            f"({', '.join(f'{k} -> {v}' for k, v in names.items() if k != v) or 'names as in the study'})")
        variants = [("wild", None)] + ([("wild_matched", matcher)] if match_domain else [])
        models = {(r["feature_set"], r["classifier"]): load_model(model_file(out, r["feature_set"], r["classifier"]))
                  for r in have}
        features: dict[tuple[str, str], np.ndarray] = {}
        for (fs, _), (_, card) in models.items():
            for prefix, transform in variants:
                if (fs, prefix) not in features:
                    features[(fs, prefix)] = featurize(card["features"], files, transform=transform, device=device,
                                                       weights=weights, log=log)
        updated = []
        source = {"folder": str(folder), "images": len(files), "classes": sorted(set(names.values())),
                  "content_sha256": digest,
                  "match_domain": _describe_domain(have[0]["dataset"]) if match_domain else None}
        for r in have:
            est, _ = models[(r["feature_set"], r["classifier"])]
            r = {k: v for k, v in r.items() if not k.startswith("wild")}  # a new wild set replaces the old
            for prefix, _ in variants:
                r.update(_scored(prefix, est, features[(r["feature_set"], prefix)], y, len(classes)))
            r["wild_source"] = source
            updated.append(r)
            log(f"{r['feature_set']:>20} {r['classifier']:<7} test {r['test_accuracy']:.4f}  wild "
                f"{r['wild_accuracy']:.4f}" + (f"  matched {r['wild_matched_accuracy']:.4f}" if match_domain else ""))
        write_results(out, updated, refresh_confusion=False)
        return updated


def _content_hash(files: list[Path], y: np.ndarray) -> str:
    """The wild set's files (names, bytes) and labels, hashed as a dataset split is."""
    from pipeline.datasets import Split

    return Split("wild", y, files=files).content_hash()


def _describe_domain(dataset: str) -> str:
    from pipeline.domain import domain_for

    return domain_for(dataset).describe()


def _scored(prefix: str, est, X: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    pred = np.asarray(est.predict(X))
    present = np.unique(y)
    return {f"{prefix}_accuracy": float((pred == y).mean()),
            f"{prefix}_macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
            f"{prefix}_n": int(len(y)),
            f"{prefix}_confusion_matrix": confusion_matrix(y, pred, labels=np.arange(n_classes)).tolist()}


