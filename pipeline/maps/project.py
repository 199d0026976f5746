"""Stage 2c: 2-D maps of a feature set (PCA / t-SNE / UMAP: `methods`), cached on disk, each with numbers
that say how well it separates the classes. Plotting lives in render.figures.

Every method maps train and test rows together (the study's Figures 4 and 5).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.console import stderr
from pipeline.data.folder import refuse_output_inside
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.files import atomic_save, atomic_write, folder_lock, read_json
from pipeline.maps.methods import DEFAULT_METHODS, SEED, check_methods, make_method
from pipeline.render.figures import map_figure
from pipeline.results import REPORTS_ROOT
from pipeline.store.featuresets import FeatureSet, check_comparable

TRUST_ROWS = 5000  # trustworthiness is O(n^2): measured on a seeded subsample of this many rows
KNN = 5


# --- scores ------------------------------------------------------------------------------------------

def knn_accuracy(coords: np.ndarray, y: np.ndarray, k: int = KNN, folds: int = 5) -> float:
    """Cross-validated k-NN accuracy in the map: how well nearby points share a class."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.bincount(y)
    cv = StratifiedKFold(max(2, min(folds, int(counts[counts > 0].min()))), shuffle=True, random_state=SEED)
    return float(cross_val_score(KNeighborsClassifier(min(k, len(y) - 1)), coords, y, cv=cv).mean())


def trust(X: np.ndarray, coords: np.ndarray, k: int = KNN, rows: int = TRUST_ROWS) -> float:
    """Trustworthiness of the map against the standardised features (1 = no false neighbours)."""
    from sklearn.manifold import trustworthiness
    from sklearn.preprocessing import StandardScaler

    idx = np.random.default_rng(SEED).permutation(len(X))[:rows]
    k = max(1, min(k, (len(idx) - 1) // 2 - 1))  # sklearn needs k < n/2
    return float(trustworthiness(StandardScaler().fit_transform(X[idx]), coords[idx], n_neighbors=k))


# --- maps with a cache ---------------------------------------------------------------------------------

def _paths(out: Path, set_name: str, method: str) -> tuple[Path, Path]:
    return out / f"{set_name}_{method}.npy", out / f"{set_name}_{method}.json"


def load_map(out: Path, set_name: str, method: str) -> tuple[np.ndarray, dict] | None:
    npy, js = _paths(Path(out), set_name, method)
    meta = read_json(js)
    if meta is None or not npy.exists():
        return None
    try:
        coords = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if coords.shape != (meta.get("rows"), 2) or not np.isfinite(coords).all():
        return None  # not the map its record describes (cut, another shape): made again, never indexed
    return coords, meta


def is_cached(out: Path, fs: FeatureSet, method, backend=None) -> bool:
    """Whether out holds this map of these features, made by the implementation this backend would run
    (a CPU map is not reused for a cuML run, nor the other way round) with its current parameters."""
    impl = make_method(method, backend) if isinstance(method, str) else method
    js = _paths(Path(out), fs.name, impl.name)[1]
    meta = read_json(js)  # damaged or foreign: not a cache hit, the map is made again
    if meta is None or not js.with_suffix(".npy").exists():
        return False
    return (meta.get("fingerprint") == fs.fingerprint and meta.get("params") == impl.params
            and meta.get("implementation") == type(impl).__name__)


def project(sets: list[FeatureSet], methods=DEFAULT_METHODS, out: Path = REPORTS_ROOT / "maps",
            backend=None, n_jobs: int | None = None,
            log: Callable[[str], None] = stderr) -> dict:
    """Map every feature set with every method (train and test rows together), score each map, cache the
    coordinates as out/<set>_<method>.npy with a .json beside it, and draw one figure per method with the
    feature sets side by side. Returns {method: [meta per feature set]}."""
    check_methods(methods, backend)
    check_comparable(sets)
    out = Path(out)
    refuse_output_inside(out, sets[0].image_folder)
    with folder_lock(out, "pipeline project"):
        return _project(sets, methods, out, backend, n_jobs, log)


def _project(sets, methods, out: Path, backend, n_jobs, log) -> dict:
    done: dict[str, list[dict]] = {}
    rows = [(np.concatenate([fs.X_train, fs.X_test]).astype(np.float32, copy=False),
             np.concatenate([fs.y_train, fs.y_test]).astype(np.int64)) for fs in sets]  # train and test together
    for m in methods:
        method = make_method(m, backend, n_jobs)
        maps: list = [load_map(out, fs.name, m) if is_cached(out, fs, method) else None for fs in sets]
        todo = [i for i, cached in enumerate(maps) if cached is None]
        for fs, cached in zip(sets, maps):
            if cached is not None:
                log(f"{fs.name:>20} {m:<5} cached  5-NN {cached[1]['knn_accuracy']:.4f}  "
                    f"trust {cached[1]['trustworthiness']:.4f}")
        starts = [f"{sets[i].name:>20} {m:<5} mapping {len(rows[i][0]):,} points ..." for i in todo]
        for i, (coords, seconds) in zip(todo, _fit_maps(method, [rows[i][0] for i in todo], starts, log)):
            fs, (X, y) = sets[i], rows[i]
            if coords.shape != (len(X), 2) or not np.isfinite(coords).all():
                raise PipelineError(f"{m} produced no usable 2-D map for {fs.name} (shape {coords.shape})")
            meta = {"feature_set": fs.name, "method": m, "label": method.label, "params": method.params,
                    **({"ran": method.ran(len(X))} if hasattr(method, "ran") else {}),
                    "implementation": type(method).__name__, "fingerprint": fs.fingerprint, "rows": len(X),
                    "n_train": len(fs.y_train), "n_test": len(fs.y_test), "seconds": round(seconds, 2),
                    "knn_accuracy": knn_accuracy(coords, y), "knn": KNN,
                    "trustworthiness": trust(X, coords), "trust_rows": min(len(X), TRUST_ROWS),
                    "classes": fs.classes}
            npy, js = _paths(out, fs.name, m)
            js.unlink(missing_ok=True)  # no record may describe coordinates it did not make
            atomic_save(npy, coords)
            atomic_write(js, json.dumps(meta, indent=1))
            fault_point("project:map")
            log(f"{fs.name:>20} {m:<5} {seconds:6.1f} s  5-NN {meta['knn_accuracy']:.4f}  "
                f"trust {meta['trustworthiness']:.4f}")
            maps[i] = coords, meta
        map_figure([(fs.name, coords, y, meta) for fs, (coords, meta), (_, y) in zip(sets, maps, rows)],
                   sets[0].classes, method.label, out / f"{m}.png")
        done[m] = [meta for _, meta in maps]
    return done


PARALLEL_ROWS = 10_000  # smaller maps take seconds: a worker process's start-up would cost more than it saves


def _fit_maps(method, Xs: list[np.ndarray], starts: list[str],
              log: Callable[[str], None]) -> Iterator[tuple[np.ndarray, float]]:
    """(coordinates, seconds) of each X, in order, each as soon as it is there (to be saved before the next
    is done): one after another, or, for a method that runs on one core (seeded UMAP), at once in up to
    `method.n_jobs` worker processes. `starts[k]` is logged when the k-th begins."""
    n_jobs = method.n_jobs  # resolved by make_method
    if getattr(method, "one_core", False) and n_jobs > 1 and len(Xs) > 1 and min(map(len, Xs)) >= PARALLEL_ROWS:
        from joblib import Parallel, delayed

        for line in starts:
            log(line)
        yield from Parallel(n_jobs=min(n_jobs, len(Xs)), return_as="generator")(
            delayed(_timed_map)(method, X) for X in Xs)
        return
    for line, X in zip(starts, Xs):
        log(line)
        yield _timed_map(method, X)


def _timed_map(method, X: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    coords = method.fit_transform(X)
    return coords, time.perf_counter() - t
