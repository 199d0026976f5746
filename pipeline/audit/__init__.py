"""Stage 2d, the test set itself: exact and near duplicates (within and across the splits), label issues
(cleanlab on out-of-fold probabilities) and outliers, from a store's embeddings and its images; then each
record's test accuracy without the leaked or suspect test images. `pipeline audit`, and `pipeline run`'s
audit stage, write `<study>/audit.json` (+ `audit.csv` of the flagged files); the report shows it.

The thresholds live here, and docs/results.md#audit says how they were chosen."""
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import check_schema, read_json

AUDIT, AUDIT_CSV = "audit.json", "audit.csv"
FORMAT = "pipeline-audit/1"

NEIGHBORS = 5  # training images searched per image: candidates for near duplicates, and the outlier score
SIDE = 16  # the pixel check compares grayscale SIDE x SIDE signatures of the two images ...
CROPS = (1.0, 0.9, 0.8)  # ... each also centre-cropped to these fractions, so a crop of a photo still matches
# near duplicate on pixels: the best-aligned signatures correlate at least PIXEL_CORR and differ by at most
# PIXEL_MAD grey levels (0..255) on average. On Fashion-MNIST the pairs found drop from 952 at 6 to 142 at 4,
# 74 at 3 and 36 at 2 (the knee): within 2 the pairs are the same photo, beyond it the same product template
# with another print or a look-alike garment (docs/results.md#audit)
PIXEL_CORR = 0.98
PIXEL_MAD = 2.0
CALIBRATION_IMAGES = 32  # training images (seeded) re-encoded, resized and cropped to calibrate the embedding's bound
OUTLIER_Z = 6.0  # an outlier: its neighbour distance this many robust standard deviations above the training median
SHOWN = 12  # groups / images per kind in the report


def _obj(props: dict, required=None) -> dict:
    return {"type": "object", "required": list(props) if required is None else required, "properties": props}


_N, _I, _S = {"type": "number"}, {"type": "integer", "minimum": 0}, {"type": "string"}
_NN = {"type": ["number", "null"]}
_SPLITS = lambda item: _obj({"train": item, "test": item})  # noqa: E731
_ISSUE = _obj({"index": _I, "given": _I, "suggested": _I, "self_confidence": _N, "path": _S})
_MEMBER = {"type": "array", "prefixItems": [{"enum": ["train", "test"]}, _I, _I], "minItems": 3, "maxItems": 3}
# audit.json, declaratively: every field the audit's rerun check, the report, the CSV and the summary read
AUDIT_SCHEMA = _obj({
    "format": {"const": FORMAT}, "key": _S, "records_key": {"type": "array"},
    "classes": {"type": "array", "items": _S},
    "store": _obj({"name": _S, "rows": _SPLITS(_I)}),
    "params": _obj({"neighbors": _I, "signature": _S, "outlier_z": _N}),
    "thresholds": _obj({"embedding_cosine": _N, "pixel_corr": _N, "pixel_mad": _N, "outlier_distance": _N,
                        "outlier_median": _N, "label_issues": _S}),
    "calibration": _obj({"images": _I, "variants": {"type": "object", "additionalProperties": _obj(
        {"pixel_confirmed": _N}, required=[])}, "pixel_confirmed": _N}),
    "duplicates": _obj({"counts": _obj({k: _I for k in (
        "groups_train", "groups_test", "groups_across", "pairs_train_test", "test_with_train_twin", "exact_groups",
        "near_groups", "conflicting_groups")}), "groups": {"type": "array", "items": _obj(
            {"kind": _S, "members": {"type": "array", "items": _MEMBER}, "conflicting_labels": {"type": "boolean"}})}}),
    "label_issues": _obj({"model": _S, "folds": _I, "share": _SPLITS(_N),
                          "per_class": _SPLITS({"type": "array", "items": _NN}),
                          "train": {"type": "array", "items": _ISSUE}, "test": {"type": "array", "items": _ISSUE}}),
    "outliers": _obj({"count": _I, "items": {"type": "array", "items": _obj(
        {"split": {"enum": ["train", "test"]}, "index": _I, "label": _I, "score": _N, "path": _S})}}),
    "accuracy": {"type": "array", "items": _obj({"feature_set": _S, "classifier": _S,
                                                "label": {"type": ["string", "null"]}, "all": _N,
                                                "without_train_twins": _NN, "without_label_issues": _NN,
                                                "removed_twins": _I, "removed_label_issues": _I})},
    "thumbs": {"type": "object", "additionalProperties": _S},
})


def read_audit(path: Path) -> dict | None:
    """audit.json, or None where there is none; a file that is not one, or one whose fields have the wrong
    types, is one line (never "up to date", then a traceback)."""
    a = read_json(path, kind=object, strict=True)
    if a is None:
        return None
    if not (isinstance(a, dict) and a.get("format") == FORMAT and isinstance(a.get("thumbs"), dict)):
        raise PipelineError(f"{path} is not pipeline's audit file; move it away (`pipeline audit` writes it)")
    check_schema(a, AUDIT_SCHEMA, path, "move it away (`pipeline audit --overwrite` writes it again)")
    return a
