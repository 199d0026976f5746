"""The images behind the numbers, for the report: for the best model of each feature set (by its CV or
validation score, never by the test score), the test images it gets most confidently wrong and a grid per
most-confused class pair; raw pixels vs embeddings image by image; retrieval (precision@k of each test image's
nearest training images, the same search `pipeline neighbors` uses) with example queries; and, from
`pipeline evaluate`, the wild photos. Written to `<out>/galleries.json` (and `galleries_wild.json`) with the
thumbnails embedded; the report only reads them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.apply.neighbors import METRIC, nearest, precision_at_k
from pipeline.apply.predict import model_scores
from pipeline.console import content_key, stderr
from pipeline.errors import PipelineError
from pipeline.files import atomic_save, atomic_write, read_json
from pipeline.models.saved import has_model, load_model, model_file
from pipeline.render.thumbs import Thumbnails, thumbnail
from pipeline.results import load_predictions, read_results, slug
from pipeline.store.featuresets import FeatureSet, source_images

GALLERY, WILD_GALLERY = "galleries.json", "galleries_wild.json"
FORMAT = "pipeline-galleries/1"
N_WRONG, N_PAIRS, PER_PAIR, N_VERSUS, N_WILD = 16, 3, 8, 12, 48
K, N_QUERIES = 10, 4  # retrieval: precision@K over every test image; a few example queries shown


def best_records(records: list[dict], out: Path | None = None) -> dict[str, dict]:
    """Per feature set, its best model (classical or trained head) by CV / validation score, among those with a
    saved model (in `out`, when given: the file is there)."""
    best: dict[str, dict] = {}
    for r in records:
        if r["classifier"] == "finetune" or not r.get("model") or (
                out is not None and not has_model(out, r["feature_set"], r["classifier"])):
            continue
        b = best.get(r["feature_set"])
        if b is None or r["cv_mean"] > b["cv_mean"]:
            best[r["feature_set"]] = r
    return best


def predict_with_confidence(est, X: np.ndarray, pred: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(predicted labels, how sure each prediction is, 'probability' | 'margin') from a saved model: the
    predicted class's probability where the model has them, else its decision score's margin over the best
    other class (an RBF SVC's one-vs-one votes make the raw score mostly a vote count). `pred`: the model's own
    predictions where they are known (saved with its record), else the predict of the model."""
    kind, s = model_scores(est, X)
    cols = np.asarray(est.classes_)
    pred = np.asarray(est.predict(X)) if pred is None else np.asarray(pred)
    j = np.searchsorted(cols, pred)  # classes_ are sorted
    rows = np.arange(len(s))
    top = s[rows, j].astype(np.float64)
    if kind == "probability":
        return pred, top, kind
    other = s.astype(np.float64).copy()
    other[rows, j] = -np.inf
    return pred, top - (other.max(1) if s.shape[1] > 1 else 0.0), "margin"


def _galleries_key(best: dict[str, dict], sets: list[FeatureSet]) -> str:
    """What galleries.json was made from: each set's best record and model, the feature sets, the parameters."""
    parts = [[r["feature_set"], r["classifier"], r.get("features_fingerprint"), r["test_accuracy"], r.get("model")]
             for r in best.values()] + [[fs.name, fs.fingerprint] for fs in sets] + [K, N_WRONG, N_PAIRS, PER_PAIR]
    return content_key(parts, default=str)


def is_current(out: Path, sets: list[FeatureSet]) -> bool:
    g = read_json(Path(out) / GALLERY)
    return g is not None and g.get("key") == _galleries_key(best_records(read_results(out), out), sets)


def write_galleries(out: Path, sets: list[FeatureSet], log: Callable[[str], None] = stderr) -> Path | None:
    """galleries.json for the study in `out` whose feature sets are `sets` (raw and/or embeddings, the same
    images); None (and a line saying why) when there is nothing to show."""
    out = Path(out)
    records = read_results(out)
    by_set = {fs.name: fs for fs in sets}
    best = {k: r for k, r in best_records(records, out).items() if k in by_set}
    if not best:
        log("galleries: no saved model of these feature sets yet")
        return None
    ds = source_images(sets[0])
    thumbs = Thumbnails(lambda split, i: ds.splits[split].batch(i, i + 1)[0])
    th = thumbs.key

    classes = sets[0].classes
    y = sets[0].y_test
    preds, galleries = {}, []
    for name, r in best.items():
        est, _ = load_model(model_file(out, name, r["classifier"]))
        pred, score, kind = predict_with_confidence(est, by_set[name].X_test, load_predictions(out, r))
        preds[name] = (pred, score)
        galleries.append(_mistakes_gallery(name, r, y, pred, score, kind, len(classes), th))
    versus = _raw_versus_embeddings(best, preds, y, th)
    retrieval = _retrieval(sets, th) if all(len(fs.y_train) for fs in sets) else []
    doc = {"format": FORMAT, "key": _galleries_key(best_records(records, out), sets), "classes": list(classes),
           "galleries": galleries, "versus": versus, "retrieval": retrieval, "thumbs": thumbs}
    atomic_write(out / GALLERY, json.dumps(doc))
    log(f"galleries: {len(galleries)} feature sets, {len(thumbs)} thumbnails in {out / GALLERY}")
    return out / GALLERY


def _mistakes_gallery(name: str, r: dict, y: np.ndarray, pred: np.ndarray, score: np.ndarray, kind: str,
                      n_classes: int, th) -> dict:
    """One feature set's best model: its most confident mistakes and its most-confused class pairs."""
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-score[wrong], kind="stable")]
    pairs = _confused_pairs(y, pred, score, order, n_classes, th)
    return {"feature_set": name, "classifier": r["classifier"], "label": r["label"],
            "score_kind": kind, "test_accuracy": r["test_accuracy"], "n_test": int(len(y)),
            "n_wrong": int(len(wrong)),
            "wrong": [_gallery_item(th("test", int(i)), y[i], pred[i], score[i]) for i in order[:N_WRONG]],
            "pairs": pairs}


def _confused_pairs(y: np.ndarray, pred: np.ndarray, score: np.ndarray, order: np.ndarray, n_classes: int,
                    th) -> list[dict]:
    """The N_PAIRS most frequent (true, predicted) mistakes, each with up to PER_PAIR of its images, most
    confident first (`order`: the wrong images, most confident first)."""
    cm = np.zeros((n_classes, n_classes), int)
    np.add.at(cm, (y, pred), 1)
    np.fill_diagonal(cm, 0)
    pairs = []
    for flat in np.argsort(-cm, axis=None, kind="stable")[:N_PAIRS]:
        a, b = divmod(int(flat), n_classes)
        if cm[a, b] == 0:
            break
        items = [int(i) for i in order if y[i] == a and pred[i] == b][:PER_PAIR]
        pairs.append({"true": a, "pred": b, "count": int(cm[a, b]),
                      "items": [_gallery_item(th("test", i), y[i], pred[i], score[i]) for i in items]})
    return pairs


def _raw_versus_embeddings(best: dict[str, dict], preds: dict, y: np.ndarray, th) -> dict | None:
    """Raw pixels' best model vs the best embeddings' model, image by image: the test images only one of them
    gets right (most confident first); None without both."""
    emb = [n for n in best if n != "raw"]
    if not ("raw" in best and emb):
        return None
    e = max(emb, key=lambda n: best[n]["cv_mean"])
    (rp, rs), (ep, es) = preds["raw"], preds[e]
    gain = np.flatnonzero((ep == y) & (rp != y))
    loss = np.flatnonzero((rp == y) & (ep != y))
    return {"raw": best["raw"]["label"], "embeddings": e, "embeddings_model": best[e]["label"],
            "both_right": int(((ep == y) & (rp == y)).sum()), "both_wrong": int(((ep != y) & (rp != y)).sum()),
            "embeddings_only": {"count": int(len(gain)), "items": [
                _gallery_item(th("test", int(i)), y[i], ep[i], es[i], raw=int(rp[i])) for i in
                gain[np.argsort(-es[gain], kind="stable")][:N_VERSUS]]},
            "raw_only": {"count": int(len(loss)), "items": [
                _gallery_item(th("test", int(i)), y[i], rp[i], rs[i], emb=int(ep[i])) for i in
                loss[np.argsort(-rs[loss], kind="stable")][:N_VERSUS]]}}


def _gallery_item(thumb_key: str, true, pred, score, **other) -> dict:
    return {"thumb": thumb_key, "true": int(true), "pred": int(pred), "score": round(float(score), 4), **other}


def _retrieval(sets: list[FeatureSet], th) -> list[dict]:
    """Per feature set: precision@K of every test image's nearest training images, and the same few example
    queries (seeded) with their neighbours."""
    rng = np.random.default_rng(0)
    y_test = sets[0].y_test
    queries = np.sort(rng.choice(len(y_test), size=min(N_QUERIES, len(y_test)), replace=False))
    rows = []
    for fs in sets:
        idx, dist = nearest(fs.X_train, fs.X_test, K)
        rows.append({"feature_set": fs.name, "k": int(idx.shape[1]), "metric": METRIC,
                     "precision": precision_at_k(idx, fs.y_train, fs.y_test),
                     "examples": [{"query": th("test", int(q)), "label": int(y_test[q]),
                                   "neighbors": [{"thumb": th("train", int(j)), "label": int(fs.y_train[j]),
                                                  "distance": round(float(d), 4)}
                                                 for j, d in zip(idx[q][:8], dist[q][:8])]} for q in queries]})
    return rows


def write_wild_gallery(out: Path, records: list[dict], models: dict, features: dict, files: list[Path],
                       y: np.ndarray, log: Callable[[str], None] = stderr) -> Path:
    """galleries_wild.json: the wild photos with the predictions of each feature set's best model."""
    from pipeline.data.images import decode_image, show_path

    best = {k: r for k, r in best_records(records, out).items() if (k, r["classifier"]) in models}
    if not best:
        raise PipelineError("no saved model to show the wild photos with")
    rank = np.zeros(len(y), int)  # each photo's place within its class: round-robin keeps every class in view
    for c in np.unique(y):
        rank[y == c] = np.arange(int((y == c).sum()))
    chosen = sorted(range(len(y)), key=lambda i: (rank[i], y[i]))[:N_WILD]
    thumbs = {f"wild:{i}": thumbnail(decode_image(files[i])) for i in chosen}
    shown = []
    for name, r in best.items():
        est, _ = models[(name, r["classifier"])]
        pred, score, kind = predict_with_confidence(est, features[(name, "wild")])
        order = sorted(chosen, key=lambda i: (pred[i] == y[i], -score[i]))  # wrong first
        shown.append({"feature_set": name, "classifier": r["classifier"], "label": r["label"], "score_kind": kind,
                      "accuracy": float((pred == y).mean()), "n": int(len(y)), "shown": len(chosen),
                      "items": [_gallery_item(f"wild:{i}", y[i], pred[i], score[i], file=show_path(files[i]))
                                for i in order]})
    wild_dir = Path(out) / "wild"  # the photos' features, for placing them on the maps (maps.html)
    wild_dir.mkdir(exist_ok=True)
    saved = {}
    for name in best:
        rel = f"wild/{slug(name)}.npy"
        atomic_save(Path(out) / rel, np.asarray(features[(name, "wild")][chosen], dtype=np.float32))
        saved[name] = rel
    doc = {"format": FORMAT, "classes": records[0]["classes"], "galleries": shown, "thumbs": thumbs,
           "features": saved, "shown": chosen, "labels": [int(y[i]) for i in chosen]}
    atomic_write(Path(out) / WILD_GALLERY, json.dumps(doc))
    log(f"galleries: the wild photos in {Path(out) / WILD_GALLERY}")
    return Path(out) / WILD_GALLERY
