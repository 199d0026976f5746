"""`pipeline curve`: how many labels do you need? Test accuracy against labelled training images per class, for
raw pixels and each embedding, on stored features.

For each k in KS (and "all"), `DRAWS` seeded stratified draws of k training images per class (a class with
fewer gives all of its own: capped, and said); each draw is fitted and tested on the whole fixed test split.
Classifiers that make sense at every k: logistic regression (classify's pipeline; its C chosen by 3-fold CV on
the first draw of each k where every class has 3 images, else `DEFAULT_C`, and used by every draw of that k),
the nearest class mean, and k-NN (classify's pipeline, its PCA and neighbours capped by the draw's size). Each
(feature set, classifier, k) is one record of kind "curve" in results.json, with every draw's seed, so any
point can be fitted again (`draw`). Why so: docs/decisions.md#label-curve.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.classical.specs import CLASSIFIERS
from pipeline.console import check_names, progress_bar, stderr
from pipeline.errors import PipelineError
from pipeline.files import folder_lock
from pipeline.results import CURVE, check_results_file, read_curves, scores, write_curves
from pipeline.store.featuresets import FeatureSet, check_comparable

KS = (1, 2, 5, 10, 20, 50, 100, 500, 1000)  # labelled training images per class; "all" is added
ALL = "all"
DRAWS = 5
CURVE_CLASSIFIERS = ("logreg", "ncm", "knn")
LABELS = {"logreg": "Logistic regression", "ncm": "Nearest class mean", "knn": "k-NN"}
C_GRID = (0.01, 0.1, 1.0)  # classify's default grid for logistic regression
DEFAULT_C = 0.1  # classify's logistic regression's own C: for draws with fewer than CV_FOLDS images of a class
CV_FOLDS = 3
CV_ROWS_PER_CLASS = 100  # the C search sees at most this many images per class of a draw (its cost stays small)
PROTOCOL = {"c_grid": list(C_GRID), "default_c": DEFAULT_C, "cv_folds": CV_FOLDS,
            "cv_rows_per_class": CV_ROWS_PER_CLASS, "version": 2}


def seed_of(k, d: int) -> int:
    """Draw d's seed at k per class (unique while draws < 100); the "all" point has one draw, seed 0."""
    return 0 if k == ALL else 100 * int(k) + d


def draw(y: np.ndarray, k, seed: int, n_classes: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """A stratified draw of k training rows per class (seeded), sorted -> (row indices, {class: images} for
    each class with fewer than k, all of which are taken; of classes 0..n_classes-1, also those with none)."""
    if k == ALL:
        return np.arange(len(y)), {}
    rng = np.random.default_rng(seed)
    idx = [rng.choice(members, min(k, len(members)), replace=False)
           for members in (np.flatnonzero(y == c) for c in sorted({*np.unique(y).tolist(), *range(n_classes)}))]
    return np.sort(np.concatenate(idx)), capped_classes(y, k, n_classes)


def capped_classes(y: np.ndarray, k, n_classes: int = 0) -> dict[int, int]:
    """{class: images} for each class with fewer than k training images (those present in y, and of classes
    0..n_classes-1 also those with none); {} for "all"."""
    if k == ALL:
        return {}
    counts = np.bincount(y, minlength=n_classes)
    return {c: int(n) for c, n in enumerate(counts) if n < k and (n > 0 or c < n_classes)}


def make_model(classifier: str, n_rows: int, n_features: int, C: float | None = None):
    """The unfitted pipeline for a draw of n_rows: classify's logistic regression and k-NN (PCA and
    neighbours capped by the rows), or the nearest class mean on the features as they are."""
    if classifier == "ncm":
        from sklearn.neighbors import NearestCentroid

        return NearestCentroid()
    est = CLASSIFIERS[classifier].make(False)
    if classifier == "logreg":
        return est.set_params(clf__C=C)
    return est.set_params(pca__n_components=min(est.get_params()["pca__n_components"], n_rows, n_features),
                          clf__n_neighbors=min(est.get_params()["clf__n_neighbors"], n_rows))


def choose_c(X: np.ndarray, y: np.ndarray, n_jobs: int | None = None) -> tuple[float, str]:
    """Logistic regression's C for a draw: the best mean accuracy of CV_FOLDS-fold CV over C_GRID on at most
    CV_ROWS_PER_CLASS rows per class of it (the fits in parallel), or DEFAULT_C where a class has fewer than
    CV_FOLDS rows."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(y)[np.unique(y)].min() < CV_FOLDS:
        return DEFAULT_C, f"default (fewer than {CV_FOLDS} images of a class)"
    sub, _ = draw(y, CV_ROWS_PER_CLASS, 0)
    X, y = X[sub], y[sub]
    folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=0).split(X, y))
    jobs = n_jobs or os.cpu_count() or 1
    acc = Parallel(n_jobs=jobs, backend="loky" if jobs > 1 else "sequential")(
        delayed(_fold_accuracy)(X, y, tr, te, C) for C in C_GRID for tr, te in folds)
    means = np.array(acc).reshape(len(C_GRID), len(folds)).mean(1)
    return C_GRID[int(np.argmax(means))], f"{CV_FOLDS}-fold CV on {len(y):,} rows"


def _fold_accuracy(X, y, tr, te, C: float) -> float:
    return float((make_model("logreg", len(tr), X.shape[1], C).fit(X[tr], y[tr]).predict(X[te]) == y[te]).mean())


def fit_point(fs: FeatureSet, classifier: str, k, seed: int, params: dict) -> dict:
    """One draw fitted with `params` and tested: its seed, rows, parameters and test scores."""
    import warnings

    idx, _ = draw(fs.y_train, k, seed)
    with warnings.catch_warnings():  # NearestCentroid's spread (unused here) of one image per class: 0 / 0
        warnings.filterwarnings("ignore", module="sklearn.neighbors._nearest_centroid")
        est = make_model(classifier, len(idx), fs.X_train.shape[1], params.get("C")).fit(fs.X_train[idx],
                                                                                         fs.y_train[idx])
    s = scores(fs.y_test, est.predict(fs.X_test), fs.classes)
    if classifier == "knn":  # what ran: PCA and neighbours as capped by this draw
        params = {"n_components": int(est.named_steps["pca"].n_components_),
                  "n_neighbors": int(est.named_steps["clf"].n_neighbors)}
    return {"seed": seed, "n_train": len(idx), "params": params, "test_accuracy": s["test_accuracy"],
            "macro_f1": s["macro_f1"]}


def point_record(fs: FeatureSet, classifier: str, k, draws: int, n_jobs: int | None = None) -> dict:
    """A (feature set, classifier, k) record: every draw (logistic regression's C chosen on the first, used by
    all), their mean and spread, the capped classes. The draws are fitted in parallel (joblib processes: measured
    faster than threads, and than one after another; docs/decisions.md#label-curve)."""
    from joblib import Parallel, delayed

    t = time.perf_counter()
    n = 1 if k == ALL else draws
    params = {}
    if classifier == "logreg":
        idx, _ = draw(fs.y_train, k, seed_of(k, 0))
        params["C"], params["C_by"] = choose_c(fs.X_train[idx], fs.y_train[idx], n_jobs)
        params["C_by"] += f", draw seed {seed_of(k, 0)}"
    jobs = min(n, n_jobs or os.cpu_count() or 1)
    runs = Parallel(n_jobs=jobs, backend="loky" if jobs > 1 else "sequential")(
        delayed(fit_point)(fs, classifier, k, seed_of(k, d), params) for d in range(n))
    acc = np.array([r["test_accuracy"] for r in runs])
    capped = capped_classes(fs.y_train, k, len(fs.classes))
    return {"kind": CURVE, "feature_set": fs.name, "classifier": classifier, "label": LABELS[classifier], "k": k,
            "draws": runs, "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if n > 1 else 0.0,
            "capped": {fs.classes[c]: m for c, m in capped.items()}, "n_train_all": len(fs.y_train),
            "n_classes": len(np.unique(fs.y_train)), "n_test": len(fs.y_test), "dataset": fs.dataset,
            "labels_sha256": fs.labels_sha256, "features_fingerprint": fs.fingerprint, "features": describe(fs),
            "protocol": PROTOCOL, "fit_seconds": round(time.perf_counter() - t, 2)}


def describe(fs: FeatureSet) -> str:
    """The features in a few words, from their recipe: raw pixels' shape, or the backbone, its weights, input
    size and the precision that ran (a store of random weights says so)."""
    r = fs.recipe
    if r["kind"] == "raw":
        return f"raw pixels, {' x '.join(map(str, r.get('image_shape') or [r.get('size')]))}"
    w = r.get("weights") or {}
    return (f"{r['backbone']}, weights {w.get('id') or str(w.get('sha256'))[:12]}, {r.get('image_size')} px, "
            f"{r.get('precision')}")


def points(fs: FeatureSet, ks=KS) -> list:
    """The k of `ks` that differ from "all" (some class has more than k images), then "all"."""
    most = np.bincount(fs.y_train).max()
    return [k for k in ks if k < most] + [ALL]


def check_curve(sets: list[FeatureSet], classifiers, ks, draws: int) -> None:
    """Every refusal before any fit, each one line."""
    check_names("classifier", classifiers, CURVE_CLASSIFIERS, sep=",")
    if not 2 <= draws < 100:  # 100 * k + draw: a seed per draw while draws < 100
        raise PipelineError(f"--draws {draws}: give 2 to 99 draws per point (a spread needs two)")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise PipelineError(f"--labels-per-class {','.join(map(str, ks))}: give whole numbers of at least 1")
    check_comparable(sets)
    present = np.unique(sets[0].y_train)
    if len(present) < 2:
        raise PipelineError(f"{sets[0].name}: every training image is of one class "
                            f"({sets[0].classes[present[0]] if len(present) else 'none'}); a label-efficiency "
                            f"curve needs two classes at least")


def is_current(rec: dict, fs: FeatureSet, draws: int) -> bool:
    """A point's record stands for these features and protocol, with at least `draws` draws (a curve made with
    --draws 10 is not fitted again by `pipeline run`'s 5)."""
    return (rec["features_fingerprint"] == fs.fingerprint and rec.get("protocol") == PROTOCOL
            and len(rec["draws"]) >= (1 if rec["k"] == ALL else draws))


def pending(out: Path, sets: list[FeatureSet], classifiers, ks=KS, draws: int = DRAWS) -> list[tuple]:
    """(feature set, classifier, k) points with no current record in out/results.json."""
    done = {(r["feature_set"], r["classifier"], r["k"]): r for r in read_curves(out)}
    return [(fs, c, k) for fs in sets for c in classifiers for k in points(fs, ks)
            if not ((r := done.get((fs.name, c, k))) and is_current(r, fs, draws))]


def curve(sets: list[FeatureSet], out: Path, classifiers=CURVE_CLASSIFIERS, ks=KS, draws: int = DRAWS,
          log: Callable[[str], None] = stderr, progress: bool | None = None, n_jobs: int | None = None) -> list[dict]:
    """Every point of every feature set's curve not already recorded in `out`, each record saved as it ends
    (a rerun resumes), then the folder's figure; returns the curve records of these feature sets."""
    check_curve(sets, classifiers, ks, draws)
    out = Path(out)
    with folder_lock(out, "pipeline curve"):
        check_results_file(out, sets[0].labels_sha256)
        todo = pending(out, sets, classifiers, ks, draws)
        for k in sorted({k for _, _, k in todo if k != ALL}):
            fs = todo[0][0]
            capped = capped_classes(fs.y_train, k, len(fs.classes))
            if capped:
                log(f"{k} per class: {', '.join(f'{fs.classes[c]} ({m})' for c, m in capped.items())} "
                    f"{'has' if len(capped) == 1 else 'have'} fewer; all of their images are used")
        with progress_bar(sum(1 if k == ALL else draws for _, _, k in todo), progress=progress, unit="fit") as bar:
            for fs, c, k in todo:
                bar.set_description(f"{fs.name} {c} k={k}")
                write_curves(out, [point_record(fs, c, k, draws, n_jobs)])
                bar.update(1 if k == ALL else draws)
        every = read_curves(out)
        curve_figure(every, out)  # the folder's whole curve, as the report draws it
    names = {fs.name for fs in sets}
    return [r for r in every if r["feature_set"] in names and r["classifier"] in classifiers]


def curve_figure(recs: list[dict], out: Path) -> Path | None:
    """out/figures/curve.png of these records: a panel per classifier, a line per feature set placed as
    `curve_points` places it (the report draws the same)."""
    from pipeline.render.figures import curve_figure as draw

    if not recs:
        return None
    sets = list(dict.fromkeys(r["feature_set"] for r in recs))
    panels = []
    for c in dict.fromkeys(r["classifier"] for r in recs):
        lines = []
        for s in sets:
            pts = curve_points(recs, s, c)
            full = [r["mean"] for _, r in pts if r["k"] == ALL]
            lines.append({"title": set_title(s, recs), "x": [x for x, _ in pts], "mean": [r["mean"] for _, r in pts],
                          "std": [r["std"] for _, r in pts], "dashed": full[0] if s == "raw" and full else None})
        panels.append({"title": LABELS.get(c, c), "lines": lines})
    return draw(panels, Path(out) / "figures" / "curve.png")


def per_class_all(rec: dict) -> float:
    """The "all" point's x: the mean number of training images per class."""
    return rec["n_train_all"] / rec["n_classes"]


def curve_points(recs: list[dict], feature_set: str, classifier: str) -> list[tuple[float, dict]]:
    """(x, record) of one line of the curve, by k, "all" last: at the mean images per class, or just past the
    largest k drawn where classes are so unequal that the mean is below it."""
    mine = [r for r in recs if r["feature_set"] == feature_set and r["classifier"] == classifier]
    drawn = sorted((r["k"], r) for r in mine if r["k"] != ALL)
    pts = [(float(k), r) for k, r in drawn]
    for r in (r for r in mine if r["k"] == ALL):
        pts.append((max(per_class_all(r), pts[-1][0] * 1.5 if pts else 0.0), r))
    return pts


def break_even(recs: list[dict], classifier: str = "logreg") -> list[dict]:
    """For each feature set other than raw pixels with an "all" point and at least one k: the labels per class
    at which its mean accuracy first reaches raw pixels' accuracy on all labels (same classifier), interpolated
    on log k between the two points that bracket it, and the label-efficiency ratio (raw's labels per class /
    that k); `k` None where the set never reaches it. [] where raw pixels have no "all" point."""
    raw = next((r for r in recs if (r["feature_set"], r["classifier"], r["k"]) == ("raw", classifier, ALL)), None)
    if raw is None:
        return []
    full, target = per_class_all(raw), raw["mean"]
    out = []
    for s in dict.fromkeys(r["feature_set"] for r in recs if r["feature_set"] != "raw"):
        line = curve_points(recs, s, classifier)
        if len(line) < 2 or line[-1][1]["k"] != ALL:
            continue  # nothing drawn, or not finished: nothing to say
        pts = [(x, r["mean"]) for x, r in line]
        k, grid_k = None, None
        for i, (x, m) in enumerate(pts):
            if m >= target:
                grid_k = x
                k = x if i == 0 else _log_interpolate(pts[i - 1], (x, m), target)
                break
        out.append({"feature_set": s, "title": set_title(s, recs), "classifier": classifier, "target": target,
                    "raw_per_class": full,
                    "k": k, "grid_k": grid_k, "ratio": full / k if k else None, "at_first": bool(pts) and
                    grid_k == pts[0][0]})
    return out


def _log_interpolate(a: tuple, b: tuple, target: float) -> float:
    """The x between a and b (x on a log scale, accuracy linear) where the accuracy reaches target."""
    (x0, m0), (x1, m1) = a, b
    f = (target - m0) / (m1 - m0) if m1 > m0 else 1.0
    return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0)))


def statement(b: dict) -> str:
    """One break-even line, in words."""
    name = b["title"]
    what = (f"raw pixels trained on all {b['raw_per_class']:,.0f} per class ({b['target']:.4f}, "
            f"{LABELS[b['classifier']].lower()})")
    if b["k"] is None:
        return f"{name} do not reach {what}, even with every label."
    if b["at_first"]:
        return (f"With {b['grid_k']:,.0f} label{'s' if b['grid_k'] != 1 else ''} per class, {name} already match "
                f"{what}: at least {b['ratio']:,.0f}x fewer labels.")
    k = f"{b['k']:.1f}" if b["k"] < 10 else f"{b['k']:,.0f}"
    return (f"With {b['grid_k']:,.0f} labels per class, {name} match {what}; interpolated, about {k} per class: "
            f"a label-efficiency ratio of about {b['ratio']:,.0f}x.")


def parse_ks(text: str) -> tuple[int, ...]:
    """--labels-per-class "1,2,5": whole numbers of at least 1, ascending, each once; else one line."""
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise PipelineError(f"--labels-per-class {text}: give whole numbers, comma-separated (e.g. 1,10,100)") \
            from None
    if not ks or ks[0] < 1:
        raise PipelineError(f"--labels-per-class {text}: give whole numbers of at least 1")
    return tuple(ks)


def curve_tables(recs: list[dict]) -> list[tuple[list[str], list[list[str]]]]:
    """The curve as tables, one per classifier: a row per k, a column per feature set, mean ± sd over the
    draws (the "all" row: its one fit)."""
    sets = list(dict.fromkeys(r["feature_set"] for r in recs))
    by = {(r["feature_set"], r["classifier"], r["k"]): r for r in recs}
    ks = sorted({r["k"] for r in recs if r["k"] != ALL}) + [ALL]
    tables = []
    for c in dict.fromkeys(r["classifier"] for r in recs):
        rows = []
        for k in ks:
            cells = [(f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if k != ALL else "")) if r else "–"
                     for r in (by.get((s, c, k)) for s in sets)]
            if any(x != "–" for x in cells):
                label = f"all ({per_class_all(next(r for r in recs if r['k'] == ALL)):,.0f})" if k == ALL else f"{k:,}"
                rows.append([label] + cells)
        tables.append(([f"{LABELS.get(c, c)}: labels per class"] + [set_title(s, recs) for s in sets], rows))
    return tables


def set_title(name: str, recs: list[dict]) -> str:
    """A feature set as the curve shows it: 'raw pixels', '<name> embeddings', and '(random weights)' where its
    backbone had no pretrained weights (the floor a pretrained backbone must beat)."""
    from pipeline.render.figures import feature_title

    random = any(r["feature_set"] == name and "random init" in r.get("features", "") for r in recs)
    return feature_title(name) + (" (random weights)" if random else "")


def capped_lines(recs: list[dict]) -> list[str]:
    """Each k at which classes had fewer than k training images, naming them and their counts."""
    seen = {}
    for r in recs:
        if r["capped"] and r["k"] != ALL:
            seen[r["k"]] = r["capped"]
    return [f"{k:,} per class: {', '.join(f'{c} ({n:,})' for c, n in capped.items())} had fewer, and all of "
            f"their images were used" for k, capped in sorted(seen.items())]
