"""The linear SVC: liblinear (scikit-learn's LinearSVC, as this project ran it before) against DenseLinearSVC
(the same model and objective by L-BFGS on dense float32 BLAS), side by side in one run, on the fits the
`default` grid makes: the search's (two thirds of the 10,000-row tuning sample, each C of the grid, one core
each, as the search's workers run them) and the refit on all training rows (every core).

    python benchmarks/bench_linsvc.py [--features raw,efficientnet_lite0] [--data-dir DIR]

Prints seconds, the speed-up, each solution's objective value (float64, the same function for both: lower is
closer to the optimum), test accuracy and how many test predictions agree, with the CPU named.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import feature_set_options  # noqa: E402

from pipeline.classical.search import stratified_subsample  # noqa: E402
from pipeline.classical.specs import CLASSIFIERS  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402


def objective(coef, intercept, X, y, classes, C):
    W = np.vstack([np.asarray(coef, np.float64).T, np.asarray(intercept, np.float64)[None]])
    Y = np.where(y[:, None] == classes[None], 1.0, -1.0)
    z = X.astype(np.float64) @ W[:-1] + W[-1]
    return 0.5 * (W ** 2).sum() + C * (np.maximum(0, 1 - Y * z) ** 2).sum()


def weights(est):
    clf = est.named_steps["clf"]
    if hasattr(clf, "estimators_"):  # OneVsRestClassifier(LinearSVC)
        return (np.vstack([e.coef_ for e in clf.estimators_]), np.concatenate([e.intercept_ for e in clf.estimators_]))
    return clf.coef_, clf.intercept_


def fit(est, X, y, threads):
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads), parallel_config(backend="threading"):
        t = time.perf_counter()
        est.fit(X, y)
        return time.perf_counter() - t


def main():
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    new = CLASSIFIERS["linsvc"].make(False)
    old = clone(new).set_params(clf=LinearSVC(C=0.01, dual=False, tol=1e-2, max_iter=2000))  # before
    print(f"CPU: {cpu_name()}, {cores} cores. old: LinearSVC(dual=False, tol=1e-2), refit as one-vs-rest on "
          f"{cores} threads; new: {new.named_steps['clf']!r}", flush=True)
    print("\n| features | fit | rows | C | old s | new s | speed-up | old objective | new objective "
          "| old acc | new acc | same predictions |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.features.split(","):
        fs = load_feature_set(name, a.dataset, a.data_dir, a.limit)
        tune = stratified_subsample(fs.y_train, 10000)
        train, held = next(StratifiedKFold(3, shuffle=True, random_state=0).split(tune, fs.y_train[tune]))
        train, held = tune[train], tune[held]
        fits = [("search", c, train, held, 1) for c in CLASSIFIERS["linsvc"].grids["default"]["clf__C"]]
        fits.append(("refit", 0.003, np.arange(len(fs.y_train)), None, cores))
        for kind, C, rows, held_rows, threads in fits:
            X, y = fs.X_train[rows], fs.y_train[rows]
            Xt, yt = (fs.X_train[held_rows], fs.y_train[held_rows]) if held_rows is not None else (fs.X_test, fs.y_test)
            o, n = clone(old).set_params(clf__C=C), clone(new).set_params(clf__C=C)
            if kind == "refit":  # the ten problems on every core, in threads (liblinear releases the GIL)
                o.set_params(clf=OneVsRestClassifier(o.named_steps["clf"], n_jobs=cores))
            so, sn = fit(o, X, y, threads), fit(n, X, y, threads)
            Xs = n.named_steps["scale"].transform(X)
            fo, fn = (objective(*weights(e), Xs, y, np.unique(y), C) for e in (o, n))
            po, pn = o.predict(Xt), n.predict(Xt)
            print(f"| {fs.name} | {kind} | {len(rows):,} | {C:g} | {so:.1f} | {sn:.1f} | {so / sn:.2f}× | {fo:.4f} "
                  f"| {fn:.4f} | {(po == yt).mean():.4f} | {(pn == yt).mean():.4f} | {(po == pn).mean():.2%} |",
                  flush=True)


if __name__ == "__main__":
    main()
