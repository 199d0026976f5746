"""The images behind the numbers, for the report: for the best model of each feature set (by its CV or
validation score, never by the test score), the test images it gets most confidently wrong and a grid per
most-confused class pair; raw pixels vs embeddings image by image; retrieval (precision@k of each test image's
nearest training images, the same search `pipeline neighbors` uses) with example queries; and, from
`pipeline evaluate`, the wild photos. Written to `<out>/galleries.json` (and `galleries_wild.json`) with the
thumbnails embedded; the report only reads them.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.apply.featurize import stderr
from pipeline.apply.neighbors import METRIC, nearest, precision_at_k
from pipeline.apply.predict import model_scores
from pipeline.errors import PipelineError
from pipeline.files import atomic_save, atomic_write, read_json
from pipeline.models.saved import has_model, load_model, model_file
from pipeline.render.thumbs import thumbnail
from pipeline.results import read_results, slug
from pipeline.store.featuresets import FeatureSet, source_images

GALLERY, WILD_GALLERY = "galleries.json", "galleries_wild.json"
FORMAT = "pipeline-galleries/1"
N_WRONG, N_PAIRS, PER_PAIR, N_VERSUS, N_WILD = 16, 3, 8, 12, 48
K, N_QUERIES = 10, 4  # retrieval: precision@K over every test image; a few example queries shown


def best_records(records: list[dict]) -> dict[str, dict]:
    """Per feature set, its best model with a saved file (classical or trained head) by CV / validation score."""
    best: dict[str, dict] = {}
    for r in records:
        if r["classifier"] == "finetune" or not r.get("model"):
            continue
        b = best.get(r["feature_set"])
        if b is None or r["cv_mean"] > b["cv_mean"]:
            best[r["feature_set"]] = r
    return best


def scored(est, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(predicted labels, the score of each prediction, 'probability' | 'decision') from a saved model."""
    kind, s = model_scores(est, X)
    j = s.argmax(1)
    pred = np.asarray(est.classes_)[j]
    return pred, s[np.arange(len(s)), j].astype(np.float64), kind


def _key(best: dict[str, dict], sets: list[FeatureSet]) -> str:
    parts = [[r["feature_set"], r["classifier"], r.get("features_fingerprint"), r["test_accuracy"], r.get("model")]
             for r in best.values()] + [[fs.name, fs.fingerprint] for fs in sets] + [K, N_WRONG, N_PAIRS, PER_PAIR]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_current(out: Path, sets: list[FeatureSet]) -> bool:
    g = read_json(Path(out) / GALLERY)
    return g is not None and g.get("key") == _key(best_records(read_results(out)), sets)


def write_galleries(out: Path, sets: list[FeatureSet], log: Callable[[str], None] = stderr) -> Path | None:
    """galleries.json for the study in `out` whose feature sets are `sets` (raw and/or embeddings, the same
    images); None (and a line saying why) when there is nothing to show."""
    out = Path(out)
    records = read_results(out)
    by_set = {fs.name: fs for fs in sets}
    best = {k: r for k, r in best_records(records).items() if k in by_set
            and has_model(out, r["feature_set"], r["classifier"])}
    if not best:
        log("galleries: no saved model of these feature sets yet")
        return None
    ds = source_images(sets[0])
    thumbs: dict[str, str] = {}

    def th(split: str, i: int) -> str:
        key = f"{split}:{i}"
        if key not in thumbs:
            thumbs[key] = thumbnail(ds.splits[split].batch(i, i + 1)[0])
        return key

    classes = sets[0].classes
    y = sets[0].y_test
    preds, galleries = {}, []
    for name, r in best.items():
        est, _ = load_model(model_file(out, name, r["classifier"]))
        pred, score, kind = scored(est, by_set[name].X_test)
        if not np.isclose((pred == y).mean(), r["test_accuracy"]):  # argmax of scores differs from predict
            pred = np.asarray(est.predict(by_set[name].X_test))
        preds[name] = (pred, score)
        wrong = np.flatnonzero(pred != y)
        order = wrong[np.argsort(-score[wrong], kind="stable")]
        cm = np.zeros((len(classes), len(classes)), int)
        np.add.at(cm, (y, pred), 1)
        np.fill_diagonal(cm, 0)
        pairs = []
        for flat in np.argsort(-cm, axis=None, kind="stable")[:N_PAIRS]:
            a, b = divmod(int(flat), len(classes))
            if cm[a, b] == 0:
                break
            items = [int(i) for i in order if y[i] == a and pred[i] == b][:PER_PAIR]
            pairs.append({"true": a, "pred": b, "count": int(cm[a, b]),
                          "items": [_item(th("test", i), y[i], pred[i], score[i]) for i in items]})
        galleries.append({"feature_set": name, "classifier": r["classifier"], "label": r["label"],
                          "score_kind": kind, "test_accuracy": r["test_accuracy"], "n_test": int(len(y)),
                          "n_wrong": int(len(wrong)),
                          "wrong": [_item(th("test", int(i)), y[i], pred[i], score[i]) for i in order[:N_WRONG]],
                          "pairs": pairs})
    versus = None
    emb = [n for n in best if n != "raw"]
    if "raw" in best and emb:
        e = max(emb, key=lambda n: best[n]["cv_mean"])
        (rp, rs), (ep, es) = preds["raw"], preds[e]
        gain = np.flatnonzero((ep == y) & (rp != y))
        loss = np.flatnonzero((rp == y) & (ep != y))
        versus = {"raw": best["raw"]["label"], "embeddings": e, "embeddings_model": best[e]["label"],
                  "both_right": int(((ep == y) & (rp == y)).sum()), "both_wrong": int(((ep != y) & (rp != y)).sum()),
                  "embeddings_only": {"count": int(len(gain)), "items": [
                      _item(th("test", int(i)), y[i], ep[i], es[i], raw=int(rp[i])) for i in
                      gain[np.argsort(-es[gain], kind="stable")][:N_VERSUS]]},
                  "raw_only": {"count": int(len(loss)), "items": [
                      _item(th("test", int(i)), y[i], rp[i], rs[i], emb=int(ep[i])) for i in
                      loss[np.argsort(-rs[loss], kind="stable")][:N_VERSUS]]}}
    retrieval = _retrieval(sets, th) if all(len(fs.y_train) for fs in sets) else []
    doc = {"format": FORMAT, "key": _key(best_records(records), sets), "classes": list(classes),
           "galleries": galleries, "versus": versus, "retrieval": retrieval, "thumbs": thumbs}
    atomic_write(out / GALLERY, json.dumps(doc))
    log(f"galleries: {len(galleries)} feature sets, {len(thumbs)} thumbnails in {out / GALLERY}")
    return out / GALLERY


def _item(thumb_key: str, true, pred, score, **other) -> dict:
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

    best = best_records(records)
    if not best:
        raise PipelineError("no saved model to show the wild photos with")
    thumbs = {f"wild:{i}": thumbnail(decode_image(f)) for i, f in enumerate(files[:N_WILD])}
    shown = []
    for name, r in best.items():
        est, _ = models[(name, r["classifier"])]
        pred, score, kind = scored(est, features[(name, "wild")])
        if not np.isclose((pred == y).mean(), r.get("wild_accuracy", (pred == y).mean())):
            pred = np.asarray(est.predict(features[(name, "wild")]))
        order = sorted(range(min(len(files), N_WILD)), key=lambda i: (pred[i] == y[i], -score[i]))  # wrong first
        shown.append({"feature_set": name, "classifier": r["classifier"], "label": r["label"], "score_kind": kind,
                      "accuracy": float((pred == y).mean()), "n": int(len(y)),
                      "items": [_item(f"wild:{i}", y[i], pred[i], score[i], file=show_path(files[i]))
                                for i in order]})
    wild_dir = Path(out) / "wild"  # the photos' features, for placing them on the maps (maps.html)
    wild_dir.mkdir(exist_ok=True)
    saved = {}
    for name in best:
        rel = f"wild/{slug(name)}.npy"
        atomic_save(Path(out) / rel, np.asarray(features[(name, "wild")][:N_WILD], dtype=np.float32))
        saved[name] = rel
    doc = {"format": FORMAT, "classes": records[0]["classes"], "galleries": shown, "thumbs": thumbs,
           "features": saved, "labels": [int(v) for v in y[:N_WILD]]}
    atomic_write(Path(out) / WILD_GALLERY, json.dumps(doc))
    log(f"galleries: the wild photos in {Path(out) / WILD_GALLERY}")
    return Path(out) / WILD_GALLERY
