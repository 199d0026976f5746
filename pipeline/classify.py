"""Stage 2: do the embeddings beat raw pixels? Classifier pipelines x grids -> one record per
(feature set, classifier): best params, CV mean/std, test accuracy, macro-F1, timings, backend.

Search (per preset): candidates x stratified folds are fitted in parallel (joblib: processes here, a Dask
cluster with --dask), each fit ticking the progress bar; `quick` and `default` tune on a stratified
subsample of the training split (`TUNE_ROWS`) and refit the best on all of it, `full` tunes on the whole
training split. The test split is used once, by the refitted model. Classifiers go one at a time, each over
every feature set; a refit that runs on one core (the RBF SVC's) runs for all feature sets at once, on threads.
Knows nothing of how features were made.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import markdown
from pipeline.compute import Backend, SklearnCPU, accel_active, available_memory, executed_on
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.featuresets import FeatureSet, check_comparable
from pipeline.models import record_stem
from pipeline.references import DATASET as STUDY_DATASET
from pipeline.references import STUDY
from pipeline.store import atomic_save, atomic_write, folder_lock, has_fields

PRESETS = ("quick", "default", "full")
TUNE_ROWS = {"quick": 2000, "default": 10000, "full": None}  # rows the grid search sees (None: all)
DEFAULT_CLASSIFIERS = ("lda", "qda", "logreg", "linsvc", "rf", "svc", "knn")


@dataclass
class ClassifierSpec:
    """A classifier: `make(native)` builds its unfitted Pipeline, `grids[preset]` its search space.

    `array_api_grids` is set for classifiers with an array-API formulation (runs on torch tensors, on the
    GPU with --device cuda): `make(True)` builds that formulation and these grids are valid for it."""
    name: str
    label: str
    make: Callable  # (native: bool) -> unfitted sklearn Pipeline
    grids: dict  # preset -> param grid (dict of lists)
    array_api_grids: dict | None = None  # preset -> grid for make(True); None: no array-API formulation
    # set in the search's fits only, under the candidate's own values: a cheaper fit that ranks the
    # candidates the same (fewer trees, a looser tolerance); the refit on all rows uses the pipeline's own
    search_params: dict = field(default_factory=dict)
    # the refit on all rows on n cores where the estimator alone would use fewer:
    # (pipeline, n, training rows) -> pipeline
    refit_on: Callable | None = None
    # (fitted pipeline, X) -> the pipeline's own predictions, computed faster than its predict (numpy only)
    fast_predict: Callable | None = None
    # the refit runs on one core and releases the GIL: the refits of several feature sets run at once
    one_core_refit: bool = False

    def native(self, backend: Backend, custom: bool = False) -> bool:
        """Whether this classifier runs in the backend's array-API formulation. A custom grid (--grid FILE)
        was written for the scikit-learn formulation: it gets the array-API one only where that is the same
        estimator with the same grids (logistic regression), never a different one (SVD LDA)."""
        if custom and self.array_api_grids is not self.grids:
            return False
        return backend.array_api and self.array_api_grids is not None

    def grid(self, preset: str, backend: Backend) -> dict:
        return (self.array_api_grids if self.native(backend) else self.grids)[preset]


def _pipe(*steps):
    from sklearn.pipeline import Pipeline

    return Pipeline(list(steps))


def _scale():
    from sklearn.preprocessing import StandardScaler

    return ("scale", StandardScaler())


def _pca(n=50):
    from sklearn.decomposition import PCA

    return ("pca", PCA(n_components=n, random_state=0))


def _lda(native: bool = False):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA

    if native:  # only solver="svd" dispatches on the Array API; it takes no shrinkage
        return _pipe(("clf", LDA(solver="svd")))
    return _pipe(("clf", LDA(solver="lsqr", shrinkage="auto")))


def _qda(native: bool = False):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis as QDA

    # Raw pixels are collinear (constant borders): QDA needs a PCA step and regularised covariances, else
    # they are singular (the study's 0.568). No standardisation: it inflates the near-constant border pixels
    # (measured on raw Fashion-MNIST, 10k rows: 0.72-0.75 with it, 0.80 without).
    return _pipe(_pca(60), ("clf", QDA(reg_param=0.3)))


def _logreg(native: bool = False):
    from sklearn.linear_model import LogisticRegression

    # tol 1e-3 (scikit-learn's default is 1e-4): lbfgs stops 3-4x sooner on all 60k Fashion-MNIST rows, test
    # accuracy within 0.2 points (benchmarks/RESULTS.md, "Cheaper refits on all 60,000 rows")
    return _pipe(_scale(), ("clf", LogisticRegression(C=0.1, max_iter=1000, tol=1e-3)))


def _linsvc(native: bool = False):
    from sklearn.svm import LinearSVC

    from pipeline.solvers import DenseLinearSVC

    if accel_active():  # scikit-learn's LinearSVC is cuML's, on the GPU
        return _pipe(_scale(), ("clf", LinearSVC(C=0.01, dual=False, tol=1e-2, max_iter=2000)))
    # LinearSVC(dual=False)'s model and objective by L-BFGS on dense BLAS, every core: on Fashion-MNIST the
    # search's fits 6-12x and the refits on all 60k rows 1.8-2.9x faster than liblinear (its ten one-vs-rest
    # problems on two threads), at a lower objective (tol 3e-4) (benchmarks/RESULTS.md, "The linear SVC by L-BFGS")
    return _pipe(_scale(), ("clf", DenseLinearSVC(C=0.01, tol=3e-4, max_iter=2000)))


def _rf_on(est, n: int, X):
    return est.set_params(clf__n_jobs=n)  # pinned to 1 in the search, whose folds run in parallel


def _rf(native: bool = False):
    from sklearn.ensemble import RandomForestClassifier

    return _pipe(("clf", RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=0)))


def _svc(native: bool = False):
    from sklearn.svm import SVC

    return _pipe(_scale(), _pca(100), ("clf", SVC(C=10, gamma="scale", cache_size=1000)))


def _svc_predict(est, X):
    from sklearn.svm import SVC

    from pipeline.solvers import rbf_svc_predict

    clf = est[-1]
    if type(clf) is not SVC or clf.kernel != "rbf" or accel_active():  # cuML's SVC predicts on the GPU
        return est.predict(X)
    # libsvm computes the kernel one test row and one support vector at a time, on one core; dense BLAS gives
    # the same votes (benchmarks/RESULTS.md, "The RBF SVC's predictions by BLAS")
    return rbf_svc_predict(clf, est[:-1].transform(X))


def _knn(native: bool = False):
    from sklearn.neighbors import KNeighborsClassifier

    return _pipe(_scale(), _pca(50), ("clf", KNeighborsClassifier(n_neighbors=5, weights="distance")))


_LOGREG_GRIDS = {"quick": {}, "default": {"clf__C": [0.01, 0.1, 1.0]},  # lbfgs: the same on the Array API
                 "full": {"clf__C": [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}}

CLASSIFIERS = {s.name: s for s in [
    ClassifierSpec("lda", "LDA", _lda, {
        "quick": {}, "default": {"clf__shrinkage": ["auto", 0.01, 0.1]},
        "full": {"clf__shrinkage": ["auto", 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3]}},
        # SVD LDA has no shrinkage; its rank threshold is what regularises it on collinear raw pixels
        array_api_grids={"quick": {}, "default": {"clf__tol": [1e-4, 1e-2]},
                         "full": {"clf__tol": [1e-6, 1e-4, 1e-3, 1e-2, 1e-1]}}),
    ClassifierSpec("qda", "QDA", _qda, {
        "quick": {}, "default": {"pca__n_components": [40, 80], "clf__reg_param": [0.1, 0.3]},
        "full": {"pca__n_components": [20, 40, 60, 80, 120], "clf__reg_param": [0.0, 0.01, 0.1, 0.2, 0.3, 0.5]}}),
    ClassifierSpec("logreg", "Logistic regression", _logreg, _LOGREG_GRIDS, array_api_grids=_LOGREG_GRIDS),
    ClassifierSpec("linsvc", "Linear SVC", _linsvc, {
        "quick": {}, "default": {"clf__C": [3e-4, 1e-3, 3e-3]},
        # C >= 0.3 does not converge within max_iter on standardised pixels (and costs minutes per fit)
        "full": {"clf__C": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1]}}),
    ClassifierSpec("rf", "Random forest", _rf, {
        "quick": {"clf__n_estimators": [50]}, "default": {"clf__min_samples_leaf": [1, 2]},
        # more trees never hurt accuracy, so `full` fixes a generous 300 rather than searching the count
        "full": {"clf__n_estimators": [300], "clf__max_features": ["sqrt", "log2", 0.05, 0.1, 0.2],
                 "clf__min_samples_leaf": [1, 2, 4]}},
        # the search ranks min_samples_leaf with 100 trees; the refit grows the pipeline's 200
        search_params={"clf__n_estimators": 100}, refit_on=_rf_on),
    ClassifierSpec("svc", "RBF SVC", _svc, {
        "quick": {}, "default": {"clf__C": [3.0, 10.0]},
        "full": {"pca__n_components": [50, 100, 200], "clf__C": [1.0, 3.0, 10.0, 30.0],
                 "clf__gamma": ["scale", 1e-3, 3e-3]}},
        # libsvm fits on one core (its one-vs-one fit has no parallel form), releasing the GIL
        fast_predict=_svc_predict, one_core_refit=True),
    ClassifierSpec("knn", "k-NN", _knn, {
        # PCA-100 beat PCA-50 by 0.45 points on 10k raw pixels (benchmarks/bench_classify.py): search both
        "quick": {}, "default": {"clf__n_neighbors": [5, 10], "pca__n_components": [50, 100]},
        "full": {"pca__n_components": [30, 50, 100], "clf__n_neighbors": [1, 3, 5, 7, 10, 15, 20],
                 "clf__weights": ["uniform", "distance"]}}),
]}


# every classifier a results table knows, in table order: the classical ones, then the trained heads
# (`pipeline train`) and fine-tuned networks (`pipeline finetune`), which write records of the same shape
ORDER = (*CLASSIFIERS, "linear", "mlp", "finetune")


def grid_id(grid: str | dict) -> str:
    """A preset's name, or 'custom-<hash>' for a dict of grids."""
    if isinstance(grid, str):
        return grid
    return "custom-" + hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:12]


# --- search ------------------------------------------------------------------------------------------

def resolve_grid(classifier: str, grid: str | dict, backend: Backend | None = None) -> dict:
    """A preset name (its grid for the formulation this backend runs), or a dict {classifier: param grid}
    (e.g. read from --grid FILE.json)."""
    if isinstance(grid, str):
        if grid not in PRESETS:
            raise PipelineError(f"--grid {grid!r}: use {', '.join(PRESETS)} or a JSON file of grids")
        return CLASSIFIERS[classifier].grid(grid, backend or SklearnCPU())
    g = grid.get(classifier, {})
    if not isinstance(g, dict) or any(not isinstance(v, list) or not v for v in g.values()):
        raise PipelineError(f"grid for {classifier} leaves nothing to search (each parameter needs a "
                            f"non-empty list of values): {g}")
    return g


def stratified_subsample(y: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subsample of size n (all rows when n is None or >= len(y))."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(idx)


def _estimator(classifier: str, native: bool, params: dict):
    from sklearn.base import clone

    return clone(CLASSIFIERS[classifier].make(native)).set_params(**params)


def _fit_score(backend, classifier, native, params, X, y, train, test, blas_threads):
    """One candidate on one fold -> (accuracy, None), or (nan, "Error: message") if anything in it failed:
    a failed fit is scored like scikit-learn's error_score=nan and counted, never fatal on its own."""
    from threadpoolctl import threadpool_limits

    context, conv = _on(backend, native)
    try:
        with threadpool_limits(blas_threads), context:
            est = _estimator(classifier, native, params)
            Xb, yb = conv(X), conv(y)
            est.fit(Xb[train], yb[train])
            pred = backend.tonumpy(est.predict(Xb[test]))
    except Exception as e:  # noqa: BLE001 - any failure inside one fit is that candidate's NaN
        first = (str(e).strip().splitlines() or [""])[0]
        return float("nan"), f"{type(e).__name__}: {first[:200]}"
    return float((np.asarray(pred) == np.asarray(y)[test]).mean()), None


def _on(backend: Backend, native: bool):
    """(context, convert) to fit in the backend's array-API formulation (dispatch on, arrays uploaded, once:
    an uploaded array passes through), or on numpy as they are."""
    if native:
        return backend.context(), backend.asarray
    return contextlib.nullcontext(), lambda a: a


def _clamp_pca(candidates: list[dict], classifier: str, cap: int) -> list[dict]:
    """A PCA step cannot keep more components than `cap` (features; for QDA, the smallest class of a
    training fold, or its covariances are singular): clamp, then drop duplicates."""
    default = CLASSIFIERS[classifier].make(False).get_params().get("pca__n_components")
    if default is None:
        return candidates
    out = []
    for c in candidates:
        if c.get("pca__n_components", default) > cap:
            c = {**c, "pca__n_components": cap}
        if c not in out:
            out.append(c)
    return out


@dataclass
class SearchPlan:
    classifier: str
    candidates: list[dict]
    folds: list[tuple[np.ndarray, np.ndarray]]
    tune_idx: np.ndarray
    native: bool = False  # the array-API formulation, on the backend's arrays


def plan_search(classifier: str, grid, y: np.ndarray, cv: int, preset_rows: int | None, classes,
                n_features: int, backend: Backend | None = None) -> SearchPlan:
    from sklearn.model_selection import ParameterGrid, StratifiedKFold

    backend = backend or SklearnCPU()
    g = resolve_grid(classifier, grid, backend)
    tune_idx = stratified_subsample(y, preset_rows)
    counts = np.bincount(y[tune_idx], minlength=len(classes))
    present = counts[counts > 0]
    cap = n_features
    if classifier == "qda":
        cap = min(cap, max(1, int(present.min() * (cv - 1) / cv) - 1))
    if cv < 2:
        raise PipelineError(f"--cv {cv}: cross-validation needs at least 2 folds")
    if cv > present.min():
        smallest = classes[int(np.where(counts == present.min())[0][0])]
        raise PipelineError(f"--cv {cv} is larger than the smallest class ({present.min()} images of "
                            f"{smallest!r} in the tuning sample); lower --cv or raise --limit")
    skf = StratifiedKFold(cv, shuffle=True, random_state=0)
    folds = [(tune_idx[a], tune_idx[b]) for a, b in skf.split(tune_idx, y[tune_idx])]
    cap = min(cap, min(len(tr) for tr, _ in folds))  # PCA keeps at most as many components as rows
    candidates = _clamp_pca(list(ParameterGrid(g)) or [{}], classifier, cap)
    return SearchPlan(classifier, candidates, folds, tune_idx,
                      CLASSIFIERS[classifier].native(backend, custom=not isinstance(grid, str)))


def classify(sets: list[FeatureSet], classifiers=DEFAULT_CLASSIFIERS, grid: str | dict = "default", cv: int = 3,
             backend: Backend | None = None, n_jobs: int | None = None, dask: str | None = None,
             out: Path | None = None, progress: bool | None = None,
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             models: dict | None = None) -> list[dict]:
    """Tune, refit and test every classifier on every feature set; write results under `out` (locked for
    the whole call, its results file checked before the first fit).

    `models`, if given, receives each refitted estimator under (feature set, classifier)."""
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise PipelineError(f"unknown classifier {', '.join(unknown) or '(none given)'}; choose from "
                            f"{','.join(CLASSIFIERS)}")
    check_comparable(sets)
    args = (sets, classifiers, grid, cv, backend or SklearnCPU(), n_jobs, dask, out, progress, log, models)
    if out is None:
        return _classify(*args)
    with folder_lock(out, "pipeline classify"):
        _check_results_file(out, sets[0])
        return _classify(*args)


def _classify(sets, classifiers, grid, cv, backend, n_jobs, dask, out, progress, log, models) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from pipeline.cluster import dask_client

    preset = grid if isinstance(grid, str) else "custom"
    rows = TUNE_ROWS.get(preset) if isinstance(grid, str) else None
    plans = {(fs.name, c): plan_search(c, grid, fs.y_train, cv, rows, fs.classes, fs.X_train.shape[1], backend)
             for fs in sets for c in classifiers}
    n_jobs = n_jobs or (os.cpu_count() or 1)
    total = sum(len(p.candidates) * len(p.folds) + 1 for p in plans.values())
    client = dask_client(dask) if dask else None
    records = []
    bar = tqdm(total=total, unit="fit", disable=(not progress) if progress is not None else None,
               file=sys.stderr, dynamic_ncols=True)

    def search(fs, c):
        plan = plans[(fs.name, c)]
        bar.set_description(f"{fs.name} {c}")
        return fs, c, plan, *_search(fs, c, plan, grid, backend, n_jobs, client, bar, log)

    def refit(fs, c, plan, best, best_scores, search_s, errors, cheap):
        rec, est = _refit_and_test(fs, c, plan, best, best_scores, backend, search_s, n_jobs)
        rec.update(dataset=fs.dataset, features_fingerprint=fs.fingerprint, grid=grid_id(grid),
                   failed_fits=len(errors), fit_errors=list(dict.fromkeys(errors))[:5], search_params=cheap)
        return fs, plan, rec, est

    def finish(fs, plan, rec, est):
        bar.update(1)
        records.append(rec)
        if models is not None:
            models[(fs.name, rec["classifier"])] = est
        log(f"{fs.name:>20} {rec['classifier']:<7} test {rec['test_accuracy']:.4f}  cv {rec['cv_mean']:.4f}"
            f"±{rec['cv_std']:.4f}  {rec['best_params']}  ({rec['search_seconds'] + rec['fit_seconds']:.0f} s, "
            f"{rec['backend']})")
        if out is not None:
            _save(out, fs, rec, est, backend if plan.native else None, log)
            write_results(out, [rec], fs)

    try:
        with bar:
            for c in classifiers:
                # a refit on one core (libsvm) that releases the GIL: the feature sets' refits run at once,
                # on threads, once every set's search is done; any other refit follows its own search
                at_once = _refits_at_once(c, sets, n_jobs, backend)
                if at_once > 1:
                    searched = [search(fs, c) for fs in sets]
                    failed = None
                    with ThreadPoolExecutor(at_once) as pool:  # each record saved as its refit ends
                        for done in as_completed([pool.submit(refit, *a) for a in searched]):
                            try:
                                finish(*done.result())
                            except Exception as e:  # noqa: BLE001 - the others' records are kept first
                                failed = failed or e
                    if failed is not None:
                        raise failed
                else:
                    for fs in sets:
                        finish(*refit(*search(fs, c)))
    finally:
        if client is not None:
            client.close()
    return records


def _refits_at_once(c: str, sets: list[FeatureSet], n_jobs: int, backend: Backend) -> int:
    """How many feature sets' refits of classifier c run at once: one, unless its refit runs on one core (and
    on the CPU); then as many as cores, feature sets and half the available memory allow (an RBF SVC's refit
    holds its kernel cache and a few copies of the rows)."""
    spec = CLASSIFIERS[c]
    if not spec.one_core_refit or backend.cuml or spec.native(backend):
        return 1
    n = min(n_jobs, len(sets))
    free = available_memory()
    if free:
        cache = spec.make(False).get_params().get("clf__cache_size", 0) * 2 ** 20
        n = min(n, max(1, free // 2 // max(int(cache + 4 * fs.X_train.nbytes) for fs in sets)))
    return n


def _search(fs: FeatureSet, c: str, plan: SearchPlan, grid, backend: Backend, n_jobs: int, client, bar, log):
    """Every candidate on every fold, in parallel (joblib processes, or the Dask cluster), each fit ticking
    the progress bar -> (best candidate's index, its fold scores, search seconds, fit errors, search params)."""
    from joblib import Parallel, delayed, parallel_config

    # GPU work (array-API, cuML proxies) stays in this process; CPU fits go to workers
    in_process = plan.native or backend.cuml or len(plan.candidates) * len(plan.folds) == 1
    jobs = 1 if in_process else n_jobs
    blas = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [(ci, tr, te) for ci in range(len(plan.candidates)) for tr, te in plan.folds]
    X = _on(backend, plan.native)[1](fs.X_train)  # array-API: one upload for all fits
    t0 = time.perf_counter()
    scores = [[] for _ in plan.candidates]
    errors = []
    cfg = parallel_config(backend="dask") if client is not None and not in_process else \
        parallel_config(backend="loky" if jobs > 1 else "sequential", n_jobs=jobs)
    cheap = CLASSIFIERS[c].search_params if isinstance(grid, str) else {}
    with cfg:
        results = Parallel(return_as="generator_unordered")(
            delayed(_scored)(ci, _fit_score, backend, c, plan.native, {**cheap, **plan.candidates[ci]}, X,
                             fs.y_train, tr, te, blas)
            for ci, tr, te in tasks)
        for ci, (score, err) in results:
            scores[ci].append(score)
            errors += [err] if err else []
            bar.update(1)
    search_s = time.perf_counter() - t0
    means = np.array([np.mean(s) for s in scores])  # a candidate with a failed fold is nan
    if np.isnan(means).all():
        raise PipelineError(f"{c} failed on every candidate for {fs.name} ({errors[0][:200]})")
    if errors:
        distinct = list(dict.fromkeys(errors))
        log(f"{fs.name} {c}: {len(errors)} of {len(tasks)} fits failed and were scored NaN "
            f"({'; '.join(distinct[:3])}{' ...' if len(distinct) > 3 else ''})")
    best = int(np.nanargmax(means))
    return best, scores[best], search_s, errors, cheap


def _save(out: Path, fs: FeatureSet, rec: dict, est, array_api: Backend | None, log) -> None:
    """The refitted model beside the results (before its record: a record with a model never lacks it). A
    model that cannot be serialised costs its file, not the fit: the record says why."""
    from pipeline.models import save_model

    try:
        rec["model"] = save_model(out, fs, rec, est, (lambda a: np.asarray(array_api.tonumpy(a)))
                                  if array_api is not None else None)
    except OSError as e:
        raise PipelineError(f"{out}/models: cannot save the model ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - an estimator skops cannot write (e.g. a GPU proxy)
        from pipeline.models import model_paths

        model_paths(out, rec["feature_set"], rec["classifier"])[0].unlink(missing_ok=True)  # an older fit's
        rec["model"], rec["model_error"] = None, f"{type(e).__name__}: {str(e)[:200]}"
        log(f"{fs.name} {rec['classifier']}: model not saved ({rec['model_error']})")


def _scored(ci, fn, *args):
    return ci, fn(*args)


def _refit_and_test(fs: FeatureSet, c: str, plan: SearchPlan, best: int, best_scores, backend: Backend,
                    search_s: float, n_jobs: int) -> tuple[dict, object]:
    """The best candidate refitted on all training rows, on every core (the search's folds are done: a
    refit the estimator would run on one core runs on `n_jobs`, in threads), then tested once."""
    from joblib import parallel_config

    spec = CLASSIFIERS[c]
    params = plan.candidates[best]
    est = _estimator(c, plan.native, params)
    if spec.refit_on is not None:
        est = spec.refit_on(est, n_jobs, fs.X_train)
    fast = spec.fast_predict if not (plan.native or backend.cuml) else None
    context, conv = _on(backend, plan.native)
    try:
        with context, parallel_config(backend="threading"):
            Xtr, ytr = conv(fs.X_train), conv(fs.y_train)
            t = time.perf_counter()
            est.fit(Xtr, ytr)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            pred = np.asarray(backend.tonumpy(fast(est, fs.X_test) if fast else est.predict(conv(fs.X_test))))
            pred_s = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - the best candidate failing on all rows is the user's problem
        raise PipelineError(f"{c} with {params} failed when refitted on all of {fs.name} "
                            f"({type(e).__name__}: {str(e).strip()[:200]})") from None
    y = np.asarray(fs.y_test)
    ran_on, device = executed_on(est)
    return {
        "feature_set": fs.name, "classifier": c, "label": CLASSIFIERS[c].label,
        "best_params": {k.split("__", 1)[-1] if k.startswith("clf__") else k: v for k, v in params.items()},
        "cv_mean": float(np.mean(best_scores)), "cv_std": float(np.std(best_scores)), "cv_folds": len(plan.folds),
        "tune_rows": len(plan.tune_idx), "candidates": len(plan.candidates),
        "fit_seconds": round(fit_s, 3), "predict_seconds": round(pred_s, 3), "search_seconds": round(search_s, 2),
        "backend": ran_on, "device": device, "device_name": _device_name(device), "estimator": _steps(est),
        "n_train": len(fs.y_train), "n_test": len(y),
        "labels_sha256": fs.labels_sha256, **scores(y, pred, fs.classes),
    }, est


def _steps(est) -> list[str]:
    """The fitted pipeline's steps by class (module.Class): which implementation ran, e.g. this project's
    L-BFGS linear SVC, a cuml.accel proxy, a one-vs-rest wrapper."""
    steps = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
    return [f"{type(s).__module__}.{type(s).__qualname__}" for s in steps if s is not None and s != "passthrough"]


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


def _device_name(device: str) -> str:
    """The processor or GPU a fit ran on, by name (the report's transfer-modes table names it)."""
    from pipeline.compute import cpu_name

    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


# --- outputs -----------------------------------------------------------------------------------------

def write_results(out: Path, new: list[dict], fs: FeatureSet | None = None,
                  refresh_confusion: bool = True) -> list[dict]:
    """Merge records into out/results.json (replacing same feature set + classifier), then rewrite what is
    derived from it: the CSV, the Markdown table, and any missing confusion matrix (.npy and .png).
    Refuses to mix records made from different labels. `new=[]` just brings the derived files up to date."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    records = read_results(out)
    for r in new:
        _refuse_other_data(records, r["labels_sha256"], path)
        records = [o for o in records if (o["feature_set"], o["classifier"]) != (r["feature_set"], r["classifier"])]
        records.append(r)
    order = {c: i for i, c in enumerate(ORDER)}
    records.sort(key=lambda r: (r["feature_set"] != "raw", r["feature_set"], order.get(r["classifier"], 99)))
    if new:
        atomic_write(path, json.dumps(records, indent=1), fsync=True)  # the record first: figures cannot lose a fit
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
    from pipeline.figures import confusion_figure

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


def read_results(out: Path) -> list[dict]:
    """The records in out/results.json ([] if there is none); a damaged or foreign file is one line, found
    before any work, and never overwritten."""
    path = Path(out) / "results.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise PipelineError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        records = json.loads(text)
    except ValueError as e:
        raise PipelineError(f"{path} is damaged (not valid JSON: {e}); pipeline will not overwrite it: move it "
                            f"away or choose another --out, then run again") from None
    if not (isinstance(records, list) and all(has_fields(r, RECORD_KEYS) for r in records)):
        raise PipelineError(f"{path} is not a pipeline results file (expected a list of records with "
                            f"{', '.join(RECORD_KEYS)}); move it away or choose another --out")
    return records


def _refuse_other_data(records: list[dict], labels_sha256: str, path: Path) -> None:
    clash = [o for o in records if o["labels_sha256"] != labels_sha256]
    if clash:
        raise PipelineError(f"{path} holds results for other data ({clash[0]['feature_set']}, "
                            f"{clash[0]['n_train']:,}/{clash[0]['n_test']:,} rows); use another --out")


def _check_results_file(out: Path, fs: FeatureSet) -> None:
    _refuse_other_data(read_results(out), fs.labels_sha256, Path(out) / "results.json")


def pending(out: Path, fs: FeatureSet, classifiers, grid: str | dict, cv: int) -> list[str]:
    """The classifiers with no record in out/results.json made from these features, grid and folds, or whose
    saved model is missing."""
    from pipeline.models import has_model

    records = read_results(out)
    done = {r["classifier"] for r in records if r["feature_set"] == fs.name and r.get("cv_folds") == cv
            and r.get("features_fingerprint") == fs.fingerprint and r.get("grid") == grid_id(grid)
            and (has_model(out, fs.name, r["classifier"]) or r.get("model_error"))}
    return [c for c in classifiers if c not in done]


CSV_COLUMNS = ["feature_set", "classifier", "test_accuracy", "macro_f1", "cv_mean", "cv_std", "cv_folds",
               "tune_rows", "candidates", "best_params", "fit_seconds", "predict_seconds", "search_seconds",
               "backend", "device", "failed_fits", "n_train", "n_test"]


def results_csv(records: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow([json.dumps(r[k], sort_keys=True) if k == "best_params" else r.get(k, "") for k in CSV_COLUMNS])
    return buf.getvalue()


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
