"""`pipeline predict`: images or a folder through a saved model -> a CSV of predicted classes with top-k
scores (probabilities where the model has them, else decision scores)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.apply import PREDICTIONS, TOP_K
from pipeline.apply.featurize import Log, collect_images, featurize, matcher
from pipeline.console import stderr
from pipeline.data.images import show_path
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, refuse_to_replace
from pipeline.models.saved import has_method, load_model
from pipeline.render import csvfile


def predict(model: str | Path, inputs, out: str | Path | None = PREDICTIONS, top_k: int = TOP_K,
            device: str = "auto", weights: str | None = None, match_domain: bool = False,
            log: Log = stderr, overwrite: bool = False) -> list[dict]:
    """Predict every image with a saved model; write the CSV (atomically) when `out` is given. An existing
    `out` is replaced only with `overwrite`, and only if it is a regular file."""
    if top_k < 1:
        raise PipelineError(f"--top-k must be at least 1, not {top_k}")
    if out is not None:
        refuse_to_replace(out, overwrite)
    est, card = load_model(model)
    transform = matcher(card["dataset"]) if match_domain else None
    files = collect_images(inputs)
    X = featurize(card["features"], files, transform=transform, device=device, weights=weights, log=log)
    pred = np.asarray(est.predict(X))
    kind, scores = model_scores(est, X)
    classes = [show_path(c) for c in card["classes"]]  # a class folder's name need not be valid UTF-8
    columns = np.asarray(est.classes_)  # the score columns: only classes the model saw in training
    k = min(top_k, len(columns))
    rows = []
    for f, p, s in zip(files, pred, scores):
        top = np.argsort(-s, kind="stable")[:k]
        rows.append({"path": show_path(f), "predicted": classes[int(p)], "score_kind": kind,
                     **{f"top{i + 1}": classes[int(columns[j])] for i, j in enumerate(top)},
                     **{f"top{i + 1}_score": float(s[j]) for i, j in enumerate(top)}})
    if out is not None:
        cols = ["path", "predicted", "score_kind"] + [c for i in range(k) for c in (f"top{i + 1}", f"top{i + 1}_score")]
        atomic_write(out, csvfile.write(cols, [[f"{r[c]:.6g}" if c.endswith("_score") else r[c] for c in cols]
                                               for r in rows]))
    return rows


def model_scores(est, X) -> tuple[str, np.ndarray]:
    """(what the scores are, one column per class): class probabilities where the model has them, else its
    decision scores, named for what they are: an SVM's one-vs-one votes (each class's vote count plus a
    tie-breaking confidence under 1/3, scikit-learn's "ovr" shape of them) or a linear model's one-vs-rest
    margin (its signed distance to each class's hyperplane). Neither is a probability."""
    if has_method(est, "predict_proba"):
        return "probability", np.asarray(est.predict_proba(X))
    d = np.asarray(est.decision_function(X))
    if d.ndim == 1:  # two classes: one score, for the second of est.classes_
        d = np.stack([-d, d], axis=1)
    clf = est[-1] if hasattr(est, "steps") else est
    return ("one-vs-one votes" if hasattr(clf, "n_support_") and len(est.classes_) > 2 else
            "one-vs-rest margin"), d
