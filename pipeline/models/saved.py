"""Saved models: every refitted classifier as `<out>/models/<features>_<classifier>.skops` (skops.io, which
loads without arbitrary pickle: only the types listed in TRUSTED beyond skops' own safe set), with a JSON card
beside it saying what it needs to predict (classes, the features' recipe: backbone, weights, preprocessing,
image size, or raw pixels' size and channels), how well it did (the record's accuracy) and what made it.
"""
from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from pipeline.embed.request import IMAGE_SIZES
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, check_schema, read_json, replacing
from pipeline.hardware import versions
from pipeline.models.heads import HEADS, TRANSFORMS
from pipeline.results import record_stem
from pipeline.sklearn_internals import TREE_STATE_TYPE, estimator_with_converted_arrays
from pipeline.store.featuresets import RAW_SIZE_MAX

MODELS_DIR = "models"
FORMAT = "pipeline-model/1"
# Beyond skops' default trusted set (scikit-learn's estimators, numpy arrays): the only types our pipelines
# hold that skops does not trust by default (a tree's state, this project's own linear SVC, QDA, k-NN, RBF SVC).
# Anything else in a file is refused, never loaded.
TRUSTED = (TREE_STATE_TYPE, "pipeline.classical.solvers.DenseLinearSVC",
           "pipeline.classical.solvers.ArrayQDA", "pipeline.classical.solvers.ArrayKNN",
           "pipeline.classical.solvers.ArraySVC",
           "pipeline.solvers.DenseLinearSVC")  # the linear SVC's name in models saved before the subpackages
_MOVED = {"pipeline.solvers": "pipeline.classical.solvers"}  # old module path -> where it lives now
_VERSIONS = ("scikit-learn", "numpy", "skops", "torch", "torchvision", "openvino")  # a card records these


MAX_CLASSES = 100_000
MAX_WIDTH = 1 << 20  # a head's input or hidden width: bounded here, then checked against the weights file
_INT = {"type": "integer"}
_SIDE = {**_INT, "minimum": 1, "maximum": RAW_SIZE_MAX}
_RAW = {"required": ["size", "channels"], "properties": {
    "size": {"type": ["integer", "null"], "minimum": 1, "maximum": RAW_SIZE_MAX}, "channels": {"enum": [1, 3]},
    "image_shape": {"type": "array", "prefixItems": [{"enum": [1, 3]}, _SIDE, _SIDE], "minItems": 3, "maxItems": 3}}}
_EMBEDDINGS = {"required": ["backbone", "image_size"], "properties": {
    "backbone": {"type": "string", "minLength": 1},
    "image_size": {**_INT, "minimum": IMAGE_SIZES[0], "maximum": IMAGE_SIZES[1]},
    "feature_dim": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_WIDTH},
    "weights": {"type": "object"}, "layer": {"type": ["string", "null"]},
    "preprocessing": {"type": ["object", "null"]}}}
_HEAD = {"required": ["head", "in_dim"], "properties": {
    "in_dim": {**_INT, "minimum": 1, "maximum": MAX_WIDTH},
    "head": {"type": "object", "required": ["kind"], "properties": {
        "kind": {"enum": list(HEADS)}, "transform": {"enum": [t for t in TRANSFORMS if t != "auto"]},
        "hidden": {"type": "array", "items": {**_INT, "minimum": 1, "maximum": MAX_WIDTH}, "minItems": 1,
                   "maxItems": 16},
        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "input_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}}}}}


def _when(key: str, value: str, then: dict) -> dict:
    return {"if": {"properties": {key: {"const": value}}, "required": [key]}, "then": then}


# A model card, declaratively: every field a loader reads, with its type and bounds. Checked before anything is
# allocated from it; after the model is loaded, `_check_fits` checks the card against the model itself.
CARD_SCHEMA = {
    "type": "object", "required": ["format", "feature_set", "classifier", "classes", "dataset", "features"],
    "properties": {
        "format": {"const": FORMAT}, "model": {"type": "string"},
        "feature_set": {"type": "string"}, "classifier": {"type": "string"}, "label": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_CLASSES},
        "dataset": {"type": "string"}, "dataset_source": {"type": ["string", "null"]},
        # null: a fine-tuned network, which takes images
        "features": {"type": ["object", "null"], "required": ["kind"],
                     "properties": {"kind": {"enum": ["raw", "embeddings"]}},
                     "allOf": [_when("kind", "raw", _RAW), _when("kind", "embeddings", _EMBEDDINGS)]},
        "architecture": {"type": "object", "required": ["kind"], "allOf": [_when("kind", "head", _HEAD)]},
        "scores": {"enum": ["probabilities", "decision", None]},
    }}


def read_card(card_path: Path) -> dict:
    """A model card, validated against CARD_SCHEMA: a missing, damaged or edited card is one line naming the
    field."""
    card = read_json(card_path, kind=object)
    if card is None:
        raise PipelineError(f"{card_path} is missing or not JSON; rerun `pipeline classify` (or `pipeline train`) "
                            f"to save the model again")
    check_schema(card, CARD_SCHEMA, card_path, "rerun `pipeline classify` (or `pipeline train`) to save the model "
                                               "again")
    return card


def model_paths(out: Path, feature_set: str, classifier: str, suffix: str = ".skops") -> tuple[Path, Path]:
    """(model, card): scikit-learn models are .skops, torch models (heads, fine-tuned networks) .safetensors."""
    stem = Path(out) / MODELS_DIR / record_stem(feature_set, classifier)
    return Path(f"{stem}{suffix}"), Path(f"{stem}.json")


def save_model(out: Path, fs, rec: dict, est, to_numpy=None) -> str:
    """Write the fitted estimator and its card atomically (the model first, the card last: a card always
    describes a complete model). `to_numpy` converts fitted array-API attributes (torch, CuPy) to numpy.
    Returns the model's path relative to `out`."""
    import skops.io as sio

    if to_numpy is not None:
        est = estimator_with_converted_arrays(est, to_numpy)
    path, card_path = model_paths(out, rec["feature_set"], rec["classifier"])
    path.parent.mkdir(parents=True, exist_ok=True)
    card_path.unlink(missing_ok=True)  # no card may describe a model it did not come with
    with replacing(path) as f:
        sio.dump(est, f, compression=zipfile.ZIP_DEFLATED, compresslevel=3)
    card = _card(path, rec, about_features(fs), ("test_accuracy", "macro_f1", "cv_mean", "best_params", "n_train",
                                                 "n_test", "grid", "backend", "device", "estimator"),
                 scores="probabilities" if has_method(est, "predict_proba") else "decision"
                 if has_method(est, "decision_function") else None, trusted_types=list(TRUSTED))
    atomic_write(card_path, json.dumps(card, indent=1))
    return str(path.relative_to(out))


def _card(path: Path, rec: dict, about: dict, record_keys: tuple[str, ...], **extra) -> dict:
    """A model's card: what it is, what it needs to predict (`about`: classes, dataset, features' recipe), how
    well it did (the record's `record_keys`), and what made it."""
    return {"format": FORMAT, "model": path.name, "feature_set": rec["feature_set"], "classifier": rec["classifier"],
            "label": rec["label"], **about, "features_fingerprint": rec.get("features_fingerprint"),
            "labels_sha256": rec["labels_sha256"], "record": {k: rec.get(k) for k in record_keys}, **extra,
            "versions": versions(*_VERSIONS), "created": datetime.now(UTC).isoformat(timespec="seconds")}


def about_features(fs) -> dict:
    """What a torch model's card says of its data when it was trained on a feature set."""
    return {"classes": list(fs.classes), "dataset": fs.dataset,
            "dataset_source": fs.meta.get("dataset", {}).get("source"), "features": fs.recipe}


def save_torch_model(out: Path, rec: dict, model, architecture: dict, about: dict) -> str:
    """A torch model's state dict as safetensors and its card (the architecture to rebuild it, the features'
    recipe, the record's scores); the model first, the card last. Returns the path relative to `out`."""
    from safetensors.torch import save

    path, card_path = model_paths(out, rec["feature_set"], rec["classifier"], ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    card_path.unlink(missing_ok=True)
    other = model_paths(out, rec["feature_set"], rec["classifier"])[0]
    other.unlink(missing_ok=True)  # never two models under one name
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with replacing(path) as f:
        f.write(save(state))
    card = _card(path, rec, about, ("test_accuracy", "macro_f1", "cv_mean", "best_params", "best_epoch", "epochs_run",
                                    "stopped_by", "n_train", "n_test", "backend", "device", "precision"),
                 architecture=architecture, scores="probabilities")
    atomic_write(card_path, json.dumps(card, indent=1))
    return str(path.relative_to(out))


def _load_torch(path: Path, card: dict):
    from safetensors.torch import load_file

    arch = card.get("architecture") or {}
    if arch.get("kind") != "head":
        raise PipelineError(f"{path}: a fine-tuned network ({card.get('feature_set')}); `pipeline predict` takes "
                            f"classifiers on features (.skops models and trained heads) for now")
    _need_features(path, card)
    from pipeline.models.nets import TorchHead, head_from_card  # torch: only for a torch model

    _check_shapes(path, card)
    try:
        model = head_from_card(card)
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - damaged file, a card that does not fit it
        raise PipelineError(f"{path}: cannot load the model ({type(e).__name__}: {str(e)[:200]}); rerun "
                            f"`pipeline train` to save it again") from None
    return TorchHead(model, len(card["classes"]))


def _need_features(path: Path, card: dict) -> None:
    if card["features"] is None:
        raise PipelineError(f"{path}: its card {path.with_suffix('.json').name} has no features' recipe; rerun "
                            f"the command that saved the model to save it again")


def _check_shapes(path: Path, card: dict) -> None:
    """The head the card describes, built without memory (torch's meta device), has exactly the tensors of the
    weights file (read from its header): a card cannot make the loader allocate more than the file holds."""
    import torch
    from safetensors import safe_open

    from pipeline.models.nets import head_from_card

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in head_from_card(card).state_dict().items()}
    try:
        with safe_open(str(path), "pt") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - not a safetensors file, a damaged header
        raise PipelineError(f"{path}: not a readable .safetensors file ({type(e).__name__}); rerun `pipeline "
                            f"train` to save it again") from None
    bad = next((k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)), None)
    if bad is not None:
        raise PipelineError(f"{path}: its card {path.with_suffix('.json').name} does not describe this model "
                            f"({bad}: the card says {want.get(bad, 'nothing')}, the file holds "
                            f"{got.get(bad, 'nothing')}); rerun `pipeline train` to save it again")


def has_method(est, method: str) -> bool:
    try:
        return hasattr(est, method)  # a Pipeline exposes it only when its last step has it
    except Exception:  # noqa: BLE001 - available_if checks may raise on odd estimators
        return False


def model_file(out: Path, feature_set: str, classifier: str) -> Path:
    """The saved model of a record: its .safetensors (torch) if there is one, else its .skops."""
    path = model_paths(out, feature_set, classifier, ".safetensors")[0]
    return path if path.is_file() else model_paths(out, feature_set, classifier)[0]


def has_model(out: Path, feature_set: str, classifier: str) -> bool:
    return model_file(out, feature_set, classifier).is_file() and model_paths(out, feature_set, classifier)[1].is_file()


def load_model(path: str | Path):
    """(estimator, card) from a .skops file (or its .json card). Refuses, in one line, a file that is not a
    pipeline model or that holds types outside skops' safe set and TRUSTED."""
    import skops.io as sio

    path = Path(path).expanduser()
    if path.suffix == ".json":
        torch_path = path.with_suffix(".safetensors")
        path = torch_path if torch_path.is_file() else path.with_suffix(".skops")
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise PipelineError(f"{path}: no such model; models are saved as <out>/models/<features>_<classifier>.skops "
                            f"by `pipeline classify` or `pipeline run`")
    card = read_card(card_path)
    if path.suffix == ".safetensors":
        return _load_torch(path, card), card  # refuses a fine-tuned network (no features to predict from)
    _need_features(path, card)
    try:
        untrusted = sio.get_untrusted_types(file=path)
        unknown = [t for t in untrusted if t not in TRUSTED]
        if unknown:
            raise PipelineError(f"{path} holds types pipeline does not trust ({', '.join(unknown[:3])}); "
                                f"it was not written by pipeline: not loaded")
        _alias_moved(untrusted)
        est = sio.load(path, trusted=untrusted)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip, a foreign file, a version skew
        raise PipelineError(f"{path}: cannot load the model ({type(e).__name__}: {str(e)[:200]}); rerun "
                            f"`pipeline classify` to save it again") from None
    _check_fits(est, card, card_path)
    return est, card


def feature_count(recipe: dict) -> int | None:
    """How many values a card's features recipe makes per image (None: not known from the card)."""
    if recipe["kind"] == "raw":
        if recipe.get("size") is None:
            return None
        return recipe["size"] ** 2 * recipe["channels"]
    return recipe.get("feature_dim")


def _check_fits(est, card: dict, card_path: Path) -> None:
    """The card against the loaded model: the features it makes are the model's inputs, and every class the
    model can predict has a name."""
    import numpy as np

    want, got = feature_count(card["features"]), getattr(est, "n_features_in_", None)
    if want is not None and got is not None and want != got:
        raise PipelineError(f"{card_path}: its features make {want:,} values per image, but the model takes {got:,}; "
                            f"the card does not belong to this model, rerun `pipeline classify` to save it again")
    labels = np.asarray(getattr(est, "classes_", []))
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(card["classes"])):
        raise PipelineError(f"{card_path}: classes names {len(card['classes'])} classes, but the model predicts "
                            f"labels up to {labels.max()}; rerun `pipeline classify` to save the model again")


def _alias_moved(types: list[str]) -> None:
    """A model saved before a module moved names its class by the old path: that path is made to resolve to
    the module's new home, so the model loads as it did."""
    import importlib
    import sys

    for old, new in _MOVED.items():
        if any(t.startswith(old + ".") for t in types) and old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
