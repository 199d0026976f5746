"""The results ledger: one record per (feature set, model) in <out>/results.json, written by classify,
train, finetune and evaluate through one builder (`make_record`) and one writer (`write_results`), with what
is derived from it (results.csv, results.md, a confusion matrix per record). Records made from other labels
are never mixed in one folder. Knows nothing of how a model was fitted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.data import dataset_slug, limit_suffix
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.files import atomic_save, atomic_write, has_fields, slug
from pipeline.hardware import device_name
from pipeline.references import DATASET as STUDY_DATASET
from pipeline.references import STUDY
from pipeline.render import csvfile, markdown
from pipeline.render.figures import confusion_figure

REPORTS_ROOT = Path("reports")  # a study's results, maps and report: reports/<dataset>/ unless --out says otherwise
# every model a results table knows, in table order: the classical classifiers (pipeline.classical.specs),
# the trained heads (`pipeline train`) and fine-tuned networks (`pipeline finetune`)
ORDER = ("lda", "qda", "logreg", "linsvc", "rf", "svc", "knn", "linear", "mlp", "finetune")


def report_dir(dataset_slug: str, suffix: str = "") -> Path:
    """A study's default --out: reports/<dataset><suffix>."""
    return REPORTS_ROOT / f"{dataset_slug}{suffix}"


def study_out(out, dataset: str, data_dir=None, sub: str = "", limit: int | None = None) -> Path:
    """A command's --out if given, else the study's default folder for this dataset (its `sub` folder): with
    --limit N, `<dataset>-firstN`, the folder `pipeline run --limit N` writes, never the full study's."""
    if out:
        return Path(out)
    return report_dir(dataset_slug(dataset, data_dir), limit_suffix(limit)) / sub


def record_stem(feature_set: str, classifier: str) -> str:
    """A record's file name stem, shared by its model, card, confusion matrix, learning curve and checkpoint."""
    return f"{slug(feature_set)}_{classifier}"


def predictions_path(out: Path, rec: dict) -> Path:
    """A record's test predictions (int64, one per test image, in the test split's order)."""
    return Path(out) / "predictions" / f"{record_stem(rec['feature_set'], rec['classifier'])}.npy"


def save_predictions(out: Path, rec: dict, pred) -> None:
    """Beside the record (before it: a record never lacks its predictions): what the maps' hover shows."""
    path = predictions_path(out, rec)
    path.parent.mkdir(exist_ok=True)
    atomic_save(path, np.asarray(pred, dtype=np.int64))


def load_predictions(out: Path, rec: dict) -> np.ndarray | None:
    """A record's saved test predictions, or None where there are none (or they do not fit the record)."""
    try:
        pred = np.load(predictions_path(out, rec), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if pred.shape != (rec["n_test"],) or pred.dtype.kind not in "iu" or (len(pred) and (
            pred.min() < 0 or pred.max() >= len(rec["classes"]))):
        return None
    return pred


def curve_path(rec: dict) -> str:
    """A trained head's or network's learning curve, relative to its report folder."""
    return f"curves/{record_stem(rec['feature_set'], rec['classifier'])}.png"


# --- records ------------------------------------------------------------------------------------------

def make_record(feature_set: str, classifier: str, label: str, *, y_test: np.ndarray, pred: np.ndarray,
                classes: list[str], labels_sha256: str, n_train: int, best_params: dict, cv_mean: float,
                cv_std: float, cv_folds: int, tune_rows: int, candidates: int, fit_seconds: float,
                backend: str, device: str, predict_seconds: float = 0.0, search_seconds: float = 0.0,
                **fields) -> dict:
    """A record: what was fitted on which features, how it was chosen (CV or a validation holdout), how long
    it took, where it ran (`backend`, `device`: read from what ran, never from what was asked), and its test
    scores; `fields` adds what a kind of model says of itself (a classifier's estimator, a head's epochs)."""
    y_test = np.asarray(y_test)
    return {"feature_set": feature_set, "classifier": classifier, "label": label, "best_params": best_params,
            "cv_mean": float(cv_mean), "cv_std": float(cv_std), "cv_folds": cv_folds, "tune_rows": tune_rows,
            "candidates": candidates, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
            "search_seconds": search_seconds, "backend": backend, "device": device,
            "device_name": " + ".join(device_name(d) for d in device.split(" + ")),  # one per device that ran
            "n_train": n_train, "n_test": len(y_test),
            "labels_sha256": labels_sha256, **fields, **scores(y_test, np.asarray(pred), classes)}


def scores(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Test accuracy, macro-F1, per-class precision/recall and the confusion matrix: every record's scores
    (classify's, trained heads', fine-tuned networks')."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = np.arange(len(classes))
    prec, rec_, _, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {"test_accuracy": float((pred == y).mean()), "macro_f1": float(f1_score(y, pred, average="macro")),
            "per_class": {name: {"precision": float(p), "recall": float(r), "support": int(s)}
                          for name, p, r, s in zip(classes, prec, rec_, support)},
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(), "classes": list(classes)}


# --- the ledger ---------------------------------------------------------------------------------------

def write_results(out: Path, new: list[dict], refresh_confusion: bool = True) -> list[dict]:
    """Merge records into out/results.json (replacing same feature set + classifier), then rewrite what is
    derived from it: the CSV, the Markdown table, and any missing confusion matrix (.npy and .png).
    Refuses to mix records made from different labels. `new=[]` just brings the derived files up to date."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    refuse_foreign_tables(out)
    records, curves = read_ledger(out)
    for r in new:
        refuse_other_data(records + curves, r["labels_sha256"], path)
        records = [o for o in records if (o["feature_set"], o["classifier"]) != (r["feature_set"], r["classifier"])]
        records.append(r)
    order = {c: i for i, c in enumerate(ORDER)}
    records.sort(key=lambda r: (r["feature_set"] != "raw", r["feature_set"], order.get(r["classifier"], 99)))
    if new:
        # the record first: figures cannot lose a fit; the curve's records are kept as they are
        atomic_write(path, json.dumps(records + curves, indent=1), fsync=True)
        fault_point("classify:record")
    atomic_write(out / "results.csv", results_csv(records))
    atomic_write(out / "results.md", results_markdown(records))
    renew = {(r["feature_set"], r["classifier"]) for r in new} if refresh_confusion else set()
    for r in records:
        stem = record_stem(r["feature_set"], r["classifier"])
        cm_dir = out / "confusion"
        if (r["feature_set"], r["classifier"]) in renew or not (cm_dir / f"{stem}.png").exists():
            _confusion_files(r, cm_dir, stem)
    return records


def _confusion_files(r: dict, cm_dir: Path, stem: str) -> None:
    cm_dir.mkdir(exist_ok=True)
    cm = np.asarray(r["confusion_matrix"])
    atomic_save(cm_dir / f"{stem}.npy", cm)
    confusion_figure(cm, r["classes"], f"{r['label']} on {r['feature_set']}: test accuracy {r['test_accuracy']:.4f}",
                     cm_dir / f"{stem}.png")


_NUM = (int, float)  # JSON writes 1.0 back as 1.0, but a hand-edited 1 is still a number
RECORD_KEYS = {"feature_set": str, "classifier": str, "label": str, "test_accuracy": _NUM, "macro_f1": _NUM,
               "cv_mean": _NUM, "cv_std": _NUM, "cv_folds": int, "tune_rows": int, "best_params": dict,
               "backend": str, "fit_seconds": _NUM, "predict_seconds": _NUM, "search_seconds": _NUM,
               "labels_sha256": str, "n_train": int, "n_test": int, "confusion_matrix": list, "classes": list}


CURVE = "curve"  # the `kind` of a label-efficiency record (pipeline.classical.curve); a model's record has none
CURVE_KEYS = {"kind": str, "feature_set": str, "classifier": str, "label": str, "k": (int, str), "draws": list,
              "mean": _NUM, "std": _NUM, "labels_sha256": str, "features_fingerprint": str, "n_test": int,
              "n_train_all": int, "n_classes": int, "capped": dict, "fit_seconds": _NUM}


def _is_curve_record(r) -> bool:
    return has_fields(r, CURVE_KEYS) and (r["k"] == "all" or (isinstance(r["k"], int) and r["k"] >= 1))


def read_results(out: Path) -> list[dict]:
    """The model records in out/results.json ([] if there is none); a damaged or foreign file is one line, found
    before any work, and never overwritten."""
    return read_ledger(out)[0]


def read_curves(out: Path) -> list[dict]:
    """The label-efficiency records in out/results.json (`kind` "curve"), in the order written."""
    return read_ledger(out)[1]


def write_curves(out: Path, new: list[dict]) -> list[dict]:
    """Merge label-efficiency records into out/results.json (replacing the same feature set, classifier and
    k), the model records kept as they are; refuses records of other labels. Returns every curve record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    refuse_foreign_tables(out)
    records, curves = read_ledger(out)
    for r in new:  # a point replaces its own, and every point of its feature set made from other features
        refuse_other_data(records + curves, r["labels_sha256"], out / "results.json")
        curves = [c for c in curves if (c["feature_set"], c["classifier"], c["k"]) !=
                  (r["feature_set"], r["classifier"], r["k"]) and not (
                      c["feature_set"] == r["feature_set"] and c["features_fingerprint"] != r["features_fingerprint"])]
        curves.append(r)
    if new:
        atomic_write(out / "results.json", json.dumps(records + curves, indent=1), fsync=True)
        fault_point("curve:point")
    return curves


def read_ledger(out: Path) -> tuple[list[dict], list[dict]]:
    """out/results.json as (model records, label-efficiency records); ([], []) if there is none."""
    path = Path(out) / "results.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    except OSError as e:
        raise PipelineError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        records = json.loads(text)
    except ValueError as e:
        raise PipelineError(f"{path} is damaged (not valid JSON: {e}); pipeline will not overwrite it: move it "
                            f"away or choose another --out, then run again") from None
    if not (isinstance(records, list) and all(_is_curve_record(r) if isinstance(r, dict) and r.get("kind") == CURVE
                                              else has_fields(r, RECORD_KEYS) for r in records)):
        raise PipelineError(f"{path} is not a pipeline results file (expected a list of records with "
                            f"{', '.join(RECORD_KEYS)}, or of kind {CURVE!r} with {', '.join(CURVE_KEYS)}); move it "
                            f"away or choose another --out")
    return [r for r in records if r.get("kind") != CURVE], [r for r in records if r.get("kind") == CURVE]


def refuse_other_data(records: list[dict], labels_sha256: str, path: Path) -> None:
    clash = [o for o in records if o["labels_sha256"] != labels_sha256]
    if clash:
        n_train = clash[0].get("n_train", clash[0].get("n_train_all"))
        raise PipelineError(f"{path} holds results for other data ({clash[0]['feature_set']}, "
                            f"{n_train:,}/{clash[0]['n_test']:,} rows); use another --out")


def check_results_file(out: Path, labels_sha256: str) -> None:
    """Before any work: out/results.json is readable and holds no records of other data, and no results.csv
    or results.md of someone else's would be replaced."""
    refuse_other_data(sum(read_ledger(out), []), labels_sha256, Path(out) / "results.json")
    refuse_foreign_tables(out)


DERIVED = ("results.csv", "results.md")  # rewritten from results.json: ours only where results.json is


def refuse_foreign_tables(out: Path) -> None:
    """results.csv / results.md are written after results.json, so without results.json they are not ours
    (a user's own, or left after they deleted it): never replaced."""
    out = Path(out)
    if (out / "results.json").exists():
        return
    theirs = [n for n in DERIVED if (out / n).exists()]
    if theirs:
        raise PipelineError(f"{out} holds {' and '.join(theirs)} but no results.json: not pipeline's results, "
                            f"pipeline will not replace them; move them away or choose another --out")


CSV_COLUMNS = ["feature_set", "classifier", "test_accuracy", "macro_f1", "cv_mean", "cv_std", "cv_folds",
               "tune_rows", "candidates", "best_params", "fit_seconds", "predict_seconds", "search_seconds",
               "backend", "device", "failed_fits", "n_train", "n_test"]


def results_csv(records: list[dict]) -> str:
    return csvfile.write(CSV_COLUMNS, [[json.dumps(r[k], sort_keys=True) if k == "best_params" else r.get(k, "")
                                        for k in CSV_COLUMNS] for r in records])


def results_markdown(records: list[dict]) -> str:
    """Test accuracy per classifier: ours (raw, each embedding), beside the original study's numbers on a
    Fashion-MNIST study."""
    tuned = [r for r in records if r["classifier"] == "finetune"]
    records = [r for r in records if r["classifier"] != "finetune"]
    sets = list(dict.fromkeys(r["feature_set"] for r in records))
    by = {(r["feature_set"], r["classifier"]): r for r in records}
    labels = {r["classifier"]: r["label"] for r in records}
    clfs = [c for c in ORDER if any((s, c) in by for s in sets)]
    vs_study = bool(records) and all(r.get("dataset") == STUDY_DATASET for r in records)
    head = ["classifier"] + [f"{s} (ours)" for s in sets] + (["raw (study)", "ResNet-18 (study)"] if vs_study else [])
    rows = []
    for c in clfs:
        cells = [labels[c]]
        for s in sets:
            r = by.get((s, c))
            cells.append(f"{r['test_accuracy']:.4f}" if r else "–")
        study = STUDY.get(c)
        if vs_study:
            cells += [f"{study[1]:.4f}", f"{study[0]:.4f}"] if study else ["–", "–"]
        rows.append(cells)
    lines = [markdown.table(head, rows)]
    any_r = records[0] if records else None
    if any_r:
        lines.append("")
        lines.append(f"Test accuracy on {any_r['n_test']:,} test images after tuning on {any_r.get('tune_rows', 0):,} "
                     f"of {any_r['n_train']:,} training images ({any_r.get('cv_folds')}-fold CV) and refitting on all "
                     f"of them." + (" Study: the original paper's Fashion-MNIST numbers (ResNet-18 features vs raw)."
                                    if vs_study else ""))
        if any(r["classifier"] in ("linear", "mlp") for r in records):
            lines.append("Linear / MLP head: trained with early stopping on a stratified validation split of the "
                         "training images (its accuracy in results.json's cv_mean).")
    if tuned:
        lines += ["", markdown.table(["fine-tuned network", "test accuracy", "macro-F1", "epochs (best/run)",
                                      "training time", "device"],
                                     [[r["feature_set"], f"{r['test_accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                                       f"{r['best_epoch']}/{r['epochs_run']}"
                                       + (" (budget)" if r.get("stopped_by") == "budget" else ""),
                                       f"{r['fit_seconds'] / 60:.1f} min", r.get("device_name", r["device"])]
                                      for r in tuned])]
    return "\n".join(lines) + "\n"
