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
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    context, conv = _on(backend, native)
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
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             models: dict | None = None) -> list[dict]:
    """Tune, refit and test every classifier on every feature set; write results under `out` (locked for
    the whole call, its results file checked before the first fit).

    `models`, if given, receives each refitted estimator under (feature set, classifier)."""
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise PipelineError(f"unknown classifier {', '.join(unknown) or '(none given)'}; choose from "
                            f"{','.join(CLASSIFIERS)}")
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
    """One classify call's arguments, passed down whole."""
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


def _classify(run: _Run) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    sets, classifiers, grid, cv, backend = run.sets, run.classifiers, run.grid, run.cv, run.backend
    n_jobs, dask, out, progress, log, models = run.n_jobs, run.dask, run.out, run.progress, run.log, run.models
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

    def search(fs, c, n_jobs):
        plan = plans[(fs.name, c)]
        bar.set_description(f"{fs.name} {c}")
        return fs, c, plan, *_search(fs, c, plan, grid, backend, n_jobs, client, bar, log)

    def refit(fs, c, plan, best, best_scores, search_s, errors, cheap, n_jobs):
        rec, est, pred = _refit_and_test(fs, c, plan, best, best_scores, backend, search_s, n_jobs)
        rec.update(dataset=fs.dataset, features_fingerprint=fs.fingerprint, grid=grid_id(grid),
                   failed_fits=len(errors), fit_errors=list(dict.fromkeys(errors))[:5], search_params=cheap)
        return fs, plan, rec, est, pred

    lock = threading.Lock()  # records, the results file and the bar are shared with a host thread

    def finish(fs, plan, rec, est, pred):
        with lock:
            bar.update(1)
            records.append(rec)
            if models is not None:
                models[(fs.name, rec["classifier"])] = est
            log(f"{fs.name:>20} {rec['classifier']:<7} test {rec['test_accuracy']:.4f}  cv {rec['cv_mean']:.4f}"
                f"±{rec['cv_std']:.4f}  {rec['best_params']}  ({rec['search_seconds'] + rec['fit_seconds']:.0f} s, "
                f"{rec['backend']})")
            if out is not None:
                _save(out, fs, rec, est, backend if plan.native else None, log)
                save_predictions(out, rec, pred)
                write_results(out, [rec])

    def run_classifier(c, n_jobs, stop=None):
        # a refit on one core (libsvm) that releases the GIL: the feature sets' refits run at once, on
        # threads, once every set's search is done; any other refit follows its own search (not in the
        # background of the next one: docs/decisions.md#background-refits). `stop` set: no next feature set
        def go():
            return stop is None or not stop.is_set()

        at_once = _refits_at_once(c, sets, n_jobs, backend, any(plans[(fs.name, c)].native for fs in sets))
        if at_once > 1:
            searched = [search(fs, c, n_jobs) for fs in sets if go()]
            failed = None
            with ThreadPoolExecutor(at_once) as pool:  # each record saved as its refit ends
                for done in as_completed([pool.submit(refit, *a, n_jobs) for a in searched]):
                    try:
                        finish(*done.result())
                    except Exception as e:  # noqa: BLE001 - the others' records are kept first
                        failed = failed or e
            if failed is not None:
                raise failed
        else:
            for fs in sets:
                if go():
                    finish(*refit(*search(fs, c, n_jobs), n_jobs))

    # on a device backend the classifiers with no formulation there run on the host's cores at the same time
    # as the others run on the device, not after them, with one worker fewer (docs/decisions.md#gpu-classical)
    host = [c for c in classifiers if not any(plans[(fs.name, c)].native for fs in sets)] \
        if backend.overlap_host and len(classifiers) > 1 else []
    try:
        with bar, _beside(host, lambda stop: [run_classifier(c, max(1, n_jobs - 1), stop) for c in host
                                              if not stop.is_set()], log):
            for c in classifiers:
                if c not in host:
                    run_classifier(c, n_jobs)
    finally:
        if client is not None:
            client.close()
    order = {c: i for i, c in enumerate(classifiers)}
    return sorted(records, key=lambda r: order[r["classifier"]])


@contextlib.contextmanager
def _beside(names: list[str], work: Callable, log):
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
    return _at_once(c, [len(fs.y_train) for fs in sets], [fs.X_train.nbytes for fs in sets],
                    min(n_jobs, len(sets)), backend, native)


def _at_once(c: str, rows: list[int], row_bytes: list[int], n: int, backend: Backend, native: bool) -> int:
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
    from joblib import Parallel, delayed, parallel_config

    # GPU work (array-API, cuML proxies) stays in this process; CPU fits go to workers. An array-API
    # formulation whose solver runs on one host core and releases the GIL (ArraySVC) fits on threads
    threads = plan.native and CLASSIFIERS[c].one_core_refit and not backend.cuml
    in_process = (plan.native and not threads) or backend.cuml or len(plan.candidates) * len(plan.folds) == 1
    jobs = 1 if in_process else n_jobs
    if threads:  # as many fits at once as half the free memory holds (each may hold its whole kernel)
        jobs = _at_once(c, [len(tr) for tr, _ in plan.folds], [fs.X_train.nbytes], jobs, backend, True)
    # BLAS threads per fit in worker processes; a thread must not set them (the limit is the whole process's)
    blas = None if threads else max(1, (os.cpu_count() or 1) // jobs)
    tasks = [(ci, tr, te) for ci in range(len(plan.candidates)) for tr, te in plan.folds]
    X = _on(backend, plan.native)[1](fs.X_train)  # array-API: one upload for all fits
    t0 = time.perf_counter()
    scores = [[] for _ in plan.candidates]
    errors = []
    cfg = parallel_config(backend="dask") if client is not None and not (in_process or threads) else \
        parallel_config(backend="threading" if threads else "loky" if jobs > 1 else "sequential", n_jobs=jobs)
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
    try:
        rec["model"] = save_model(out, fs, rec, est, (lambda a: np.asarray(array_api.tonumpy(a)))
                                  if array_api is not None else None)
    except OSError as e:
        raise PipelineError(f"{out}/models: cannot save the model ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - an estimator skops cannot write (e.g. a GPU proxy)
        model_paths(out, rec["feature_set"], rec["classifier"])[0].unlink(missing_ok=True)  # an older fit's
        rec["model"], rec["model_error"] = None, f"{type(e).__name__}: {str(e)[:200]}"
        log(f"{fs.name} {rec['classifier']}: model not saved ({rec['model_error']})")


def _scored(ci, fn, *args):
    return ci, fn(*args)


def _refit_and_test(fs: FeatureSet, c: str, plan: SearchPlan, best: int, best_scores, backend: Backend,
                    search_s: float, n_jobs: int) -> tuple[dict, object, np.ndarray]:
    """The best candidate refitted on all training rows, on every core (the search's folds are done: a
    refit the estimator would run on one core runs on `n_jobs`, in threads), then tested once: (record,
    fitted estimator, its test predictions)."""
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
    ran_on, device = executed_on(est)
    return make_record(
        fs.name, c, spec.label, y_test=fs.y_test, pred=pred, classes=fs.classes, labels_sha256=fs.labels_sha256,
        n_train=len(fs.y_train),
        best_params={k.split("__", 1)[-1] if k.startswith("clf__") else k: v for k, v in params.items()},
        cv_mean=np.mean(best_scores), cv_std=np.std(best_scores), cv_folds=len(plan.folds),
        tune_rows=len(plan.tune_idx), candidates=len(plan.candidates), fit_seconds=round(fit_s, 3),
        predict_seconds=round(pred_s, 3), search_seconds=round(search_s, 2), backend=ran_on, device=device,
        estimator=_steps(est), steps={k: " on ".join(v) if v[0] != STATELESS else STATELESS
                                      for k, v in steps_ran_on(est).items()}), est, pred


def _steps(est) -> list[str]:
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
