"""Label issues: cleanlab's `find_label_issues` on predicted probabilities that never saw the image's own
label: out-of-fold on the training split (cross-validated), a model fitted on the training split for the
test images. The model is the same for every study (not the grid's choice): the rows L2-normalised (the
embedding's cosine geometry, which the neighbour search uses too), at most PCA_DIMS principal components,
then a logistic regression. Standardising each dimension instead made a dimension that is near zero in the
training folds dominate an image where it is not (a clear triangle called a circle with probability 1.0
out of fold); this model flags only the planted errors in the tests and is as accurate as the standardised
one on Fashion-MNIST (docs/results.md#audit)."""
from __future__ import annotations

import warnings

import numpy as np

from pipeline.errors import PipelineError

INSTALL = "pip install 'transfer-workbench[audit]'"
C, PCA_DIMS = 10.0, 256
MIN_PER_CLASS = 5  # cleanlab's min_examples_per_class default
MODEL = f"logistic regression (C={C:g}) on L2-normalised features, at most {PCA_DIMS} principal components"


def cleanlab_filter():
    try:
        from cleanlab import filter as cl_filter
    except ImportError:
        raise PipelineError(f"the label-issue check needs cleanlab: {INSTALL}") from None
    return cl_filter


def default_model(rows: int, dim: int):
    """The model for `rows` training rows (per fold) of `dim` features."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    k = min(PCA_DIMS, dim, max(rows - 1, 1))
    steps = [Normalizer()] + ([PCA(k, random_state=0)] if k < dim else [])
    return make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000))


def probabilities(X_train, y_train, X_test, n_classes: int, cv: int, n_jobs=None, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(out-of-fold train probabilities, test probabilities from the model fitted on all training rows,
    folds used), each (rows, n_classes): a class with no training image gets probability 0."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(y_train, minlength=n_classes)
    folds = int(min(cv, counts[counts > 0].min()))
    if folds < 2:
        raise PipelineError("a class has a single training image: out-of-fold probabilities need two per class")
    model = default_model(len(y_train) * (folds - 1) // folds, X_train.shape[1])
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    P_train = cross_val_predict(clone(model), X_train, y_train, cv=split, method="predict_proba", n_jobs=n_jobs)
    fitted = model.fit(X_train, y_train)
    cols = np.asarray(fitted.classes_)
    out = []
    for P in (P_train, fitted.predict_proba(X_test)):
        F = np.zeros((len(P), n_classes))
        F[:, cols] = P
        out.append(F)
    return out[0], out[1], folds


def label_issues(y: np.ndarray, P: np.ndarray) -> list[int]:
    """Indices cleanlab flags, most suspect (lowest self-confidence) first. One process: cleanlab's pool
    relies on fork-inherited globals and fails under the forkserver start method (and it is fast alone)."""
    if len(y) < 2 or len(np.unique(y)) < 2:
        return []
    cl_filter = cleanlab_filter()
    with warnings.catch_warnings():  # "too few examples in class k": small folders; the audit says it instead
        warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
        found = cl_filter.find_label_issues(y, P, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [int(i) for i in found]


def small_classes(y: np.ndarray, n_classes: int) -> list[int]:
    """Classes with fewer images than cleanlab needs to flag all of their label issues (its
    min_examples_per_class, 5): their issues may be missed."""
    counts = np.bincount(y, minlength=n_classes)
    return [int(c) for c in np.flatnonzero((counts > 0) & (counts < MIN_PER_CLASS))]
