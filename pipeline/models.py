"""Saved models: every refitted classifier as `<out>/models/<features>_<classifier>.skops` (skops.io, which
loads without arbitrary pickle: only the types listed in TRUSTED beyond skops' own safe set), with a JSON card
beside it saying what it needs to predict (classes, the features' recipe: backbone, weights, preprocessing,
image size, or raw pixels' size and channels), how well it did (the record's accuracy) and what made it.
"""
from __future__ import annotations

import json
import platform
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.store import atomic_write, read_json, replacing

MODELS_DIR = "models"
FORMAT = "pipeline-model/1"
# Beyond skops' default trusted set (scikit-learn's estimators, numpy arrays): the only type our pipelines
# hold that skops does not trust by default. Anything else in a file is refused, never loaded.
TRUSTED = ("sklearn.tree._tree.Tree",)
_VERSIONS = ("scikit-learn", "numpy", "skops", "torch", "torchvision", "openvino")


def model_paths(out: Path, feature_set: str, classifier: str) -> tuple[Path, Path]:
    stem = Path(out) / MODELS_DIR / f"{feature_set}_{classifier}"
    return stem.with_suffix(".skops"), stem.with_suffix(".json")


def save_model(out: Path, fs, rec: dict, est, to_numpy=None) -> str:
    """Write the fitted estimator and its card atomically (the model first, the card last: a card always
    describes a complete model). `to_numpy` converts fitted array-API attributes (torch, CuPy) to numpy.
    Returns the model's path relative to `out`."""
    import skops.io as sio

    if to_numpy is not None:
        from sklearn.utils._array_api import _estimator_with_converted_arrays

        est = _estimator_with_converted_arrays(est, to_numpy)
    path, card_path = model_paths(out, rec["feature_set"], rec["classifier"])
    path.parent.mkdir(parents=True, exist_ok=True)
    card_path.unlink(missing_ok=True)  # no card may describe a model it did not come with
    with replacing(path) as f:
        sio.dump(est, f, compression=zipfile.ZIP_DEFLATED, compresslevel=3)
    card = {
        "format": FORMAT, "model": path.name, "feature_set": rec["feature_set"], "classifier": rec["classifier"],
        "label": rec["label"], "classes": list(fs.classes), "dataset": fs.dataset,
        "dataset_source": fs.meta.get("dataset", {}).get("source"), "features": fs.recipe,
        "features_fingerprint": fs.fingerprint, "labels_sha256": rec["labels_sha256"],
        "record": {k: rec.get(k) for k in ("test_accuracy", "macro_f1", "cv_mean", "best_params", "n_train",
                                            "n_test", "grid", "backend", "device")},
        "scores": "probabilities" if _has(est, "predict_proba") else "decision" if _has(est, "decision_function")
        else None,
        "trusted_types": list(TRUSTED), "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write(card_path, json.dumps(card, indent=1))
    return str(path.relative_to(out))


def _has(est, method: str) -> bool:
    try:
        return hasattr(est, method)  # a Pipeline exposes it only when its last step has it
    except Exception:  # noqa: BLE001 - available_if checks may raise on odd estimators
        return False


def _versions() -> dict:
    from importlib import metadata

    v = {"python": platform.python_version()}
    for pkg in _VERSIONS:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return v


def has_model(out: Path, feature_set: str, classifier: str) -> bool:
    path, card = model_paths(out, feature_set, classifier)
    return path.is_file() and card.is_file()


def load_model(path: str | Path):
    """(estimator, card) from a .skops file (or its .json card). Refuses, in one line, a file that is not a
    pipeline model or that holds types outside skops' safe set and TRUSTED."""
    import skops.io as sio

    path = Path(path).expanduser()
    if path.suffix == ".json":
        path = path.with_suffix(".skops")
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise PipelineError(f"{path}: no such model; models are saved as <out>/models/<features>_<classifier>.skops "
                            f"by `pipeline classify` or `pipeline run`")
    card = read_json(card_path)
    if card is None or card.get("format") != FORMAT or not isinstance(card.get("features"), dict):
        raise PipelineError(f"{path}: its card {card_path.name} is missing or not a pipeline model card; "
                            f"rerun `pipeline classify` to save the model again")
    try:
        untrusted = sio.get_untrusted_types(file=path)
        unknown = [t for t in untrusted if t not in TRUSTED]
        if unknown:
            raise PipelineError(f"{path} holds types pipeline does not trust ({', '.join(unknown[:3])}); "
                                f"it was not written by pipeline: not loaded")
        est = sio.load(path, trusted=untrusted)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip, a foreign file, a version skew
        raise PipelineError(f"{path}: cannot load the model ({type(e).__name__}: {str(e)[:200]}); rerun "
                            f"`pipeline classify` to save it again") from None
    return est, card


def find_models(out: Path) -> list[Path]:
    """The saved models of a report folder, by name."""
    return sorted((Path(out) / MODELS_DIR).glob("*.skops"))
