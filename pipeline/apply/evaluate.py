"""`pipeline evaluate`: the "in the wild" test. A folder of class sub-folders scored by every saved model of a
study, its numbers added to the study's records (and, with `match_domain`, the same after mapping each photo
toward the training images' look)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.apply.featurize import Log, featurize
from pipeline.apply.featurize import matcher as domain_matcher
from pipeline.apply.gallery import write_wild_gallery
from pipeline.console import stderr
from pipeline.data import Split
from pipeline.data.domain import domain_for
from pipeline.data.folder import refuse_output_inside
from pipeline.data.images import class_images, show_path, verify_image, visible
from pipeline.errors import PipelineError
from pipeline.files import folder_lock
from pipeline.models.saved import has_model, load_model, model_file
from pipeline.results import read_results, write_results


def _key(name: str) -> str:
    """Class names compared case-, space-, underscore-, hyphen- and slash-insensitively."""
    return re.sub(r"[\s_/\\-]+", "", name).casefold()


def _class_of(sub: Path, classes: list[str]) -> int:
    """The class a wild folder names: its exact name first; else the one class equal up to case and separators
    (two such classes, such as `Cat` and `cat` for a folder `CAT`, are refused, never guessed)."""
    if sub.name in classes:
        return classes.index(sub.name)
    hits = [i for i, c in enumerate(classes) if _key(c) == _key(sub.name)]
    if len(hits) > 1:
        raise PipelineError(f"{show_path(sub)}: matches classes {', '.join(repr(classes[i]) for i in hits)} only "
                            f"up to case and separators; rename the folder to one of them exactly")
    if not hits:
        raise PipelineError(f"{show_path(sub)}: matches no class of this study; its classes are "
                            f"{', '.join(classes)} (case, spaces, _, - and / do not matter)")
    return hits[0]


def wild_folder(folder: str | Path, classes: list[str]) -> tuple[list[Path], np.ndarray, dict[str, str]]:
    """DIR/<class>/<images> -> files, labels (indices into `classes`), {folder name: class}."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PipelineError(f"--folder {folder}: not a folder; expected {folder}/<class>/<images>")
    files, labels, names = [], [], {}
    for sub in sorted(p for p in visible(folder) if p.is_dir()):
        i = _class_of(sub, classes)
        if classes[i] in names.values():
            raise PipelineError(f"{show_path(sub)}: a second folder for class {classes[i]!r}; merge them")
        names[sub.name] = classes[i]
        imgs = class_images(sub)
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise PipelineError(f"{folder}: no images in class sub-folders; expected {folder}/<class>/<images>")
    for f in files:
        verify_image(f)
    return files, np.asarray(labels, dtype=np.int64), names


def evaluate(out: str | Path, folder: str | Path, match_domain: bool = False, device: str = "auto",
             weights: str | None = None, log: Log = stderr, skip_done: bool = False) -> list[dict] | None:
    """Score every saved model of `out` on the wild folder; add wild_* fields to their records (and
    wild_matched_* with `match_domain`); returns the updated records. With `skip_done` (`pipeline run --wild`),
    returns None without work when every saved model already has numbers for this folder's current content
    and this domain matching."""
    out = Path(out)
    refuse_output_inside(out, folder)  # else its models/ and confusion/ would be read as wild classes
    with folder_lock(out, "pipeline evaluate"):
        records = read_results(out)
        have = [r for r in records if has_model(out, r["feature_set"], r["classifier"])
                and r["classifier"] != "finetune"]  # fine-tuned networks take images, not features
        if not have:
            raise PipelineError(f"no saved models in {out}/models; run `pipeline run` or `pipeline classify` "
                                f"with --out {out} first")
        classes = have[0]["classes"]
        matcher = domain_matcher(have[0]["dataset"]) if match_domain else None  # refused before any work
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
        write_wild_gallery(out, updated, models, features, files, y, log)
        return updated


def _content_hash(files: list[Path], y: np.ndarray) -> str:
    """The wild set's files (names, bytes) and labels, hashed as a dataset split is."""
    return Split("wild", y, files=files).content_hash()


def _describe_domain(dataset: str) -> str:
    return domain_for(dataset).describe()


def _scored(prefix: str, est, X: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    pred = np.asarray(est.predict(X))
    present = np.unique(y)
    return {f"{prefix}_accuracy": float((pred == y).mean()),
            f"{prefix}_macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
            f"{prefix}_n": int(len(y)),
            f"{prefix}_confusion_matrix": confusion_matrix(y, pred, labels=np.arange(n_classes)).tolist()}
