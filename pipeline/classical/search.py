"""Stage 2a: do the embeddings beat raw pixels? Classifier pipelines x grids -> one record per
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
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.classical.backends import STATELESS, Backend, SklearnCPU, executed_on, steps_ran_on
from pipeline.classical.specs import (
    CLASSIFIERS,
    DEFAULT_CLASSIFIERS,
    DEFAULT_CV,
    DEFAULT_GRID,
    TUNE_ROWS,
    check_custom_grid,
    check_folds,
    grid_id,
    resolve_grid,
)
from pipeline.console import check_names, progress_bar, stderr
from pipeline.data.folder import refuse_output_inside
from pipeline.errors import PipelineError
from pipeline.files import folder_lock
from pipeline.hardware import available_memory, dask_client
from pipeline.models.saved import has_model, model_paths, save_model
from pipeline.results import check_results_file, make_record, read_results, save_predictions, write_results
from pipeline.store.featuresets import FeatureSet, check_comparable

# --- search ------------------------------------------------------------------------------------------

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
    a failed fit is scored like scikit-learn's error_score=nan and counted, never fatal on its own.
    `blas_threads` None: the process's BLAS threads are left as they are (a fit on a thread)."""
    from threadpoolctl import threadpool_limits

    context, conv = _dispatch_and_convert(backend, native)
    try:
        with threadpool_limits(blas_threads) if blas_threads else contextlib.nullcontext(), context:
            est = _estimator(classifier, native, params)
            Xb, yb = conv(X), conv(y)
            est.fit(Xb[train], yb[train])
            pred = backend.tonumpy(est.predict(Xb[test]))
    except Exception as e:  # noqa: BLE001 - any failure inside one fit is that candidate's NaN
        first = (str(e).strip().splitlines() or [""])[0]
        return float("nan"), f"{type(e).__name__}: {first[:200]}"
    return float((np.asarray(pred) == np.asarray(y)[test]).mean()), None


def _dispatch_and_convert(backend: Backend, native: bool):
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
    check_folds(cv)
    g = resolve_grid(classifier, grid, backend)
    tune_idx = stratified_subsample(y, preset_rows)
    counts = np.bincount(y[tune_idx], minlength=len(classes))
    present = counts[counts > 0]
    cap = n_features
    if classifier == "qda":
        cap = min(cap, max(1, int(present.min() * (cv - 1) / cv) - 1))
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


def classify(sets: list[FeatureSet], classifiers=DEFAULT_CLASSIFIERS, grid: str | dict = DEFAULT_GRID,
             cv: int = DEFAULT_CV, backend: Backend | None = None, n_jobs: int | None = None, dask: str | None = None,
             out: Path | None = None, progress: bool | None = None,
             log: Callable[[str], None] = stderr,
             models: dict | None = None) -> list[dict]:
    """Tune, refit and test every classifier on every feature set; write results under `out` (locked for
    the whole call, its results file checked before the first fit).

    `models`, if given, receives each refitted estimator under (feature set, classifier)."""
    check_names("classifier", classifiers, CLASSIFIERS, sep=",")
    check_folds(cv)  # before anything is derived from it (QDA's rank limit divides by it)
    if isinstance(grid, dict):
        check_custom_grid(grid, classifiers)
    check_comparable(sets)
    refuse_output_inside(out, sets[0].image_folder)
    run = _Run(sets, classifiers, grid, cv, backend or SklearnCPU(), n_jobs, dask, out, progress, log, models)
    if out is None:
        return _classify(run)
    with folder_lock(out, "pipeline classify"):
        check_results_file(out, sets[0].labels_sha256)
        return _classify(run)


@dataclass
class _Run:
    """One classify call's arguments, passed down whole, and what the call derives from them for its steps:
    each (feature set, classifier)'s search plan, the Dask client, the progress bar, the records so far."""
    sets: list[FeatureSet]
    classifiers: tuple
    grid: str | dict
    cv: int
    backend: Backend
    n_jobs: int | None
    dask: str | None
    out: Path | None
    progress: bool | None
    log: Callable[[str], None]
    models: dict | None
    plans: dict[tuple[str, str], SearchPlan] = field(default_factory=dict)
    client: object = None
    bar: object = None
    records: list[dict] = field(default_factory=list)
    # records, the results file and the bar are shared with a host thread and the refits' threads
    lock: threading.Lock = field(default_factory=threading.Lock)

    def native(self, c: str) -> bool:
        """Whether classifier c runs in the backend's array-API formulation on any feature set."""
        return any(self.plans[(fs.name, c)].native for fs in self.sets)


class _Searched(NamedTuple):
    """One feature set's search for one classifier: its plan and `_search`'s results, what its refit needs."""
    fs: FeatureSet
    c: str
    plan: SearchPlan
    best: int
    best_scores: list
    search_s: float
    errors: list
    cheap: dict


def _classify(run: _Run) -> list[dict]:
    """Every search planned first, then each classifier on every feature set in turn (on a device backend, the
    host's classifiers beside the device's); the records in the classifiers' order."""
    run.plans = _plan_every_search(run)
    n_jobs = run.n_jobs or (os.cpu_count() or 1)
    total = sum(len(p.candidates) * len(p.folds) + 1 for p in run.plans.values())
    run.client = dask_client(run.dask) if run.dask else None
    run.bar = progress_bar(total, progress=run.progress, unit="fit")
    host = _host_classifiers(run)
    try:
        with run.bar, _running_beside(host, lambda stop: _run_on_host(run, host, max(1, n_jobs - 1), stop),
                                      run.log):
            for c in run.classifiers:
                if c not in host:
                    _run_classifier(run, c, n_jobs)
    finally:
        if run.client is not None:
            run.client.close()
    order = {c: i for i, c in enumerate(run.classifiers)}
    return sorted(run.records, key=lambda r: order[r["classifier"]])


def _plan_every_search(run: _Run) -> dict[tuple[str, str], SearchPlan]:
    """Each (feature set, classifier)'s search plan, all made (and checked) before the first fit."""
    rows = TUNE_ROWS.get(run.grid) if isinstance(run.grid, str) else None
    return {(fs.name, c): plan_search(c, run.grid, fs.y_train, run.cv, rows, fs.classes, fs.X_train.shape[1],
                                      run.backend)
            for fs in run.sets for c in run.classifiers}


def _host_classifiers(run: _Run) -> list[str]:
    """On a device backend, the classifiers with no formulation there: they run on the host's cores at the same
    time as the others run on the device, not after them (docs/decisions.md#gpu-classical)."""
    if not (run.backend.overlap_host and len(run.classifiers) > 1):
        return []
    return [c for c in run.classifiers if not run.native(c)]


def _run_on_host(run: _Run, host: list[str], n_jobs: int, stop: threading.Event) -> None:
    """The host's classifiers in turn, with one worker fewer (`n_jobs`), until `stop` is set."""
    for c in host:
        if not stop.is_set():
            _run_classifier(run, c, n_jobs, stop)


def _run_classifier(run: _Run, c: str, n_jobs: int, stop: threading.Event | None = None) -> None:
    """Classifier c on every feature set, each record saved as its refit ends. A refit on one core (libsvm) that
    releases the GIL: the feature sets' refits run at once, on threads, once every set's search is done; any
    other refit follows its own search (not in the background of the next one:
    docs/decisions.md#background-refits). `stop` set: no next feature set."""
    at_once = _refits_at_once(c, run.sets, n_jobs, run.backend, run.native(c))
    if at_once > 1:
        _search_all_then_refit_at_once(run, c, n_jobs, at_once, stop)
        return
    for fs in run.sets:
        if stop is None or not stop.is_set():
            _finish(run, *_refit(run, _search_one(run, fs, c, n_jobs), n_jobs))


def _search_all_then_refit_at_once(run: _Run, c: str, n_jobs: int, at_once: int,
                                   stop: threading.Event | None) -> None:
    """Every feature set's search for c, then their refits, `at_once` at a time on threads, each record saved as
    its refit ends; a failed refit is raised once the others' records are saved."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    searched = [_search_one(run, fs, c, n_jobs) for fs in run.sets if stop is None or not stop.is_set()]
    failed = None
    with ThreadPoolExecutor(at_once) as pool:
        for done in as_completed([pool.submit(_refit, run, one, n_jobs) for one in searched]):
            try:
                _finish(run, *done.result())
            except Exception as e:  # noqa: BLE001 - the others' records are kept first
                failed = failed or e
    if failed is not None:
        raise failed


def _search_one(run: _Run, fs: FeatureSet, c: str, n_jobs: int) -> _Searched:
    """Classifier c's grid search on one feature set, named on the progress bar."""
    plan = run.plans[(fs.name, c)]
    run.bar.set_description(f"{fs.name} {c}")
    return _Searched(fs, c, plan, *_search(fs, c, plan, run.grid, run.backend, n_jobs, run.client, run.bar,
                                           run.log))


def _refit(run: _Run, one: _Searched, n_jobs: int) -> tuple:
    """The searched best refitted and tested -> (feature set, plan, its record, the estimator, its predictions),
    the record completed with what the search knows (dataset, fingerprint, grid, failed fits)."""
    rec, est, pred = _refit_and_test(one.fs, one.c, one.plan, one.best, one.best_scores, run.backend, one.search_s,
                                     n_jobs)
    rec.update(dataset=one.fs.dataset, features_fingerprint=one.fs.fingerprint, grid=grid_id(run.grid),
               failed_fits=len(one.errors), fit_errors=list(dict.fromkeys(one.errors))[:5], search_params=one.cheap)
    return one.fs, one.plan, rec, est, pred


def _finish(run: _Run, fs: FeatureSet, plan: SearchPlan, rec: dict, est, pred: np.ndarray) -> None:
    """A refitted classifier's record kept (and its estimator in `models`), its line logged, and with `out`
    its model, predictions and record saved; under the lock (the host's thread and the refits' share them)."""
    with run.lock:
        run.bar.update(1)
        run.records.append(rec)
        if run.models is not None:
            run.models[(fs.name, rec["classifier"])] = est
        run.log(_result_line(fs, rec))
        if run.out is not None:
            _save_model_or_say_why(run.out, fs, rec, est, run.backend if plan.native else None, run.log)
            save_predictions(run.out, rec, pred)
            write_results(run.out, [rec])


def _result_line(fs: FeatureSet, rec: dict) -> str:
    """The log line of one record: test accuracy, CV score, best parameters, time and backend."""
    return (f"{fs.name:>20} {rec['classifier']:<7} test {rec['test_accuracy']:.4f}  cv {rec['cv_mean']:.4f}"
            f"±{rec['cv_std']:.4f}  {rec['best_params']}  ({rec['search_seconds'] + rec['fit_seconds']:.0f} s, "
            f"{rec['backend']})")


@contextlib.contextmanager
def _running_beside(names: list[str], work: Callable, log):
    """Runs `work(stop)` on a thread while the block runs; on leaving, waits for it (its records are saved as
    they come) and raises the block's error, else work's. If the block fails, `stop` is set: work finishes the
    feature set in progress and starts no other (its error, if it fails too, is logged). Nothing to run: a
    plain block."""
    if not names:
        yield
        return
    log(f"on the host's cores while the device fits the others: {', '.join(names)}")
    result, stop = {}, threading.Event()

    def target():
        try:
            work(stop)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=target, name="pipeline-host-classifiers", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        if thread.is_alive():
            log("waiting for the host's classifier to finish its feature set in progress (its record is kept)")
        thread.join()
        if "error" in result:
            log(f"the host's classifiers failed too: {type(result['error']).__name__}: {result['error']}")
        raise
    thread.join()
    if "error" in result:
        raise result["error"]


def _refits_at_once(c: str, sets: list[FeatureSet], n_jobs: int, backend: Backend, native: bool) -> int:
    """How many feature sets' refits of classifier c run at once: one, unless its refit runs on one core
    (and not under cuML); then as many as cores, feature sets and half the available memory allow (an RBF
    SVC's refit holds its kernel cache, or its whole kernel, and a few copies of the rows;
    docs/decisions.md#refits-at-once)."""
    if not CLASSIFIERS[c].one_core_refit or backend.cuml:
        return 1
    return _one_core_fits_at_once(c, [len(fs.y_train) for fs in sets], [fs.X_train.nbytes for fs in sets],
                                  min(n_jobs, len(sets)), backend, native)


def _one_core_fits_at_once(c: str, rows: list[int], row_bytes: list[int], n: int, backend: Backend,
                           native: bool) -> int:
    """At most n one-core fits of classifier c at once, as many as half the available memory holds: each
    budgeted at what its spec says it holds (`refit_bytes`: an RBF SVC's kernel cache, or its whole kernel)
    for the most rows given, plus four copies of the largest rows."""
    free = available_memory()
    if not free:
        return n
    spec = CLASSIFIERS[c]
    held = (spec.refit_bytes or (lambda *_: 0))(spec.make(native), max(rows), backend.device if native else "cpu")
    return min(n, max(1, free // 2 // (held + 4 * max(row_bytes))))


def _search(fs: FeatureSet, c: str, plan: SearchPlan, grid, backend: Backend, n_jobs: int, client, bar, log):
    """Every candidate on every fold, in parallel (joblib processes, or the Dask cluster), each fit ticking
    the progress bar -> (best candidate's index, its fold scores, search seconds, fit errors, search params)."""
    from joblib import Parallel, delayed

    cfg, blas = _search_parallelism(fs, c, plan, backend, n_jobs, client)
    tasks = [(ci, tr, te) for ci in range(len(plan.candidates)) for tr, te in plan.folds]
    X = _dispatch_and_convert(backend, plan.native)[1](fs.X_train)  # array-API: one upload for all fits
    t0 = time.perf_counter()
    scores = [[] for _ in plan.candidates]
    errors = []
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
    best = _best_candidate(fs, c, scores, errors, len(tasks), log)
    return best, scores[best], search_s, errors, cheap


def _search_parallelism(fs: FeatureSet, c: str, plan: SearchPlan, backend: Backend, n_jobs: int, client):
    """(joblib's parallel_config, BLAS threads per fit) for a search. GPU work (array-API, cuML proxies) stays in
    this process; CPU fits go to workers (processes, or the Dask cluster). An array-API formulation whose solver
    runs on one host core and releases the GIL (ArraySVC) fits on threads, as many at once as half the free
    memory holds (each may hold its whole kernel). BLAS threads are set per fit in worker processes only: a
    thread must not set them (the limit is the whole process's)."""
    from joblib import parallel_config

    threads = plan.native and CLASSIFIERS[c].one_core_refit and not backend.cuml
    in_process = (plan.native and not threads) or backend.cuml or len(plan.candidates) * len(plan.folds) == 1
    jobs = 1 if in_process else n_jobs
    if threads:
        jobs = _one_core_fits_at_once(c, [len(tr) for tr, _ in plan.folds], [fs.X_train.nbytes], jobs, backend,
                                      True)
    blas = None if threads else max(1, (os.cpu_count() or 1) // jobs)
    if client is not None and not (in_process or threads):
        return parallel_config(backend="dask"), blas
    return parallel_config(backend="threading" if threads else "loky" if jobs > 1 else "sequential",
                           n_jobs=jobs), blas


def _best_candidate(fs: FeatureSet, c: str, scores: list[list[float]], errors: list[str], n_fits: int, log) -> int:
    """The index of the candidate with the best mean fold score (one with a failed fold scores nan); failed fits
    logged in one line, every candidate failing one error."""
    means = np.array([np.mean(s) for s in scores])  # a candidate with a failed fold is nan
    if np.isnan(means).all():
        raise PipelineError(f"{c} failed on every candidate for {fs.name} ({errors[0][:200]})")
    if errors:
        distinct = list(dict.fromkeys(errors))
        log(f"{fs.name} {c}: {len(errors)} of {n_fits} fits failed and were scored NaN "
            f"({'; '.join(distinct[:3])}{' ...' if len(distinct) > 3 else ''})")
    return int(np.nanargmax(means))


def _save_model_or_say_why(out: Path, fs: FeatureSet, rec: dict, est, array_api: Backend | None, log) -> None:
    """The refitted model beside the results (before its record: a record with a model never lacks it). A
    model that cannot be serialised costs its file, not the fit: the record says why."""
    try:
        rec["model"] = save_model(out, fs, rec, est, (lambda a: np.asarray(array_api.tonumpy(a)))
                                  if array_api is not None else None)
    except PipelineError:  # the disk, not the estimator (a full disk, a file in the way): the run stops here
        raise
    except OSError as e:
        raise PipelineError(f"{out}/models: cannot save the model ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - an estimator skops cannot write (e.g. a GPU proxy)
        model_paths(out, rec["feature_set"], rec["classifier"])[0].unlink(missing_ok=True)  # an older fit's
        rec["model"], rec["model_error"] = None, f"{type(e).__name__}: {str(e)[:200]}"
        log(f"{fs.name} {rec['classifier']}: model not saved ({rec['model_error']})")


def _scored(ci, fn, *args):
    """(candidate index, fn(*args)): one fit's score tagged with its candidate, the results arriving unordered.
    Its name names the search's tasks on a Dask cluster (tests/helpers.py counts them by it)."""
    return ci, fn(*args)


def _refit_and_test(fs: FeatureSet, c: str, plan: SearchPlan, best: int, best_scores, backend: Backend,
                    search_s: float, n_jobs: int) -> tuple[dict, object, np.ndarray]:
    """The best candidate refitted on all training rows, on every core (the search's folds are done: a
    refit the estimator would run on one core runs on `n_jobs`, in threads), then tested once: (record,
    fitted estimator, its test predictions)."""
    spec = CLASSIFIERS[c]
    params = plan.candidates[best]
    est = _estimator(c, plan.native, params)
    if spec.refit_on is not None:
        est = spec.refit_on(est, n_jobs, fs.X_train)
    fast = spec.fast_predict if not (plan.native or backend.cuml) else None
    try:
        pred, fit_s, pred_s = _fit_and_predict(est, fs, plan.native, backend, fast)
    except Exception as e:  # noqa: BLE001 - the best candidate failing on all rows is the user's problem
        raise PipelineError(f"{c} with {params} failed when refitted on all of {fs.name} "
                            f"({type(e).__name__}: {str(e).strip()[:200]})") from None
    ran_on, device = executed_on(est)
    return make_record(
        fs.name, c, spec.label, y_test=fs.y_test, pred=pred, classes=fs.classes, labels_sha256=fs.labels_sha256,
        n_train=len(fs.y_train), best_params=_short_param_names(params),
        cv_mean=np.mean(best_scores), cv_std=np.std(best_scores), cv_folds=len(plan.folds),
        tune_rows=len(plan.tune_idx), candidates=len(plan.candidates), fit_seconds=round(fit_s, 3),
        predict_seconds=round(pred_s, 3), search_seconds=round(search_s, 2), backend=ran_on, device=device,
        estimator=_step_classes(est), steps=_step_places(est)), est, pred


def _fit_and_predict(est, fs: FeatureSet, native: bool, backend: Backend, fast: Callable | None):
    """`est` fitted on all training rows (joblib's loops inside it on threads), then its test predictions as
    numpy, by `fast(est, X)` where given -> (predictions, fit seconds, predict seconds)."""
    from joblib import parallel_config

    context, conv = _dispatch_and_convert(backend, native)
    with context, parallel_config(backend="threading"):
        Xtr, ytr = conv(fs.X_train), conv(fs.y_train)
        t = time.perf_counter()
        est.fit(Xtr, ytr)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        pred = np.asarray(backend.tonumpy(fast(est, fs.X_test) if fast else est.predict(conv(fs.X_test))))
        pred_s = time.perf_counter() - t
    return pred, fit_s, pred_s


def _short_param_names(params: dict) -> dict:
    """A candidate's parameters as a record shows them: the classifier's without their `clf__` prefix."""
    return {k.split("__", 1)[-1] if k.startswith("clf__") else k: v for k, v in params.items()}


def _step_places(est) -> dict[str, str]:
    """Each fitted step -> where it ran ("backend on device"), or STATELESS for a step with no fitted arrays."""
    return {k: " on ".join(v) if v[0] != STATELESS else STATELESS for k, v in steps_ran_on(est).items()}


def _step_classes(est) -> list[str]:
    """The fitted pipeline's steps by class (module.Class): which implementation ran, e.g. this project's
    L-BFGS linear SVC, a cuml.accel proxy, a one-vs-rest wrapper."""
    steps = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
    return [f"{type(s).__module__}.{type(s).__qualname__}" for s in steps if s is not None and s != "passthrough"]


def pending(out: Path, fs: FeatureSet, classifiers, grid: str | dict, cv: int) -> list[str]:
    """The classifiers with no record in out/results.json made from these features, grid and folds, or whose
    saved model is missing."""
    records = read_results(out)
    done = {r["classifier"] for r in records if r["feature_set"] == fs.name and r.get("cv_folds") == cv
            and r.get("features_fingerprint") == fs.fingerprint and r.get("grid") == grid_id(grid)
            and (has_model(out, fs.name, r["classifier"]) or r.get("model_error"))}
    return [c for c in classifiers if c not in done]
