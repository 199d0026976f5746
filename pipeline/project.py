"""Stage 3: 2-D maps of a feature set (PCA / t-SNE / UMAP), cached on disk, each with numbers that say how
well it separates the classes. Plotting lives in figures.py.

A map method is a small class behind one name (`METHODS`); optional libraries are imported when used and
fail with an install hint. Every method maps train and test rows together (the study's Figures 4 and 5).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.featuresets import FeatureSet, check_comparable
from pipeline.store import atomic_save, atomic_write, folder_lock, read_json

SEED = 0
TRUST_ROWS = 5000  # trustworthiness is O(n^2): measured on a seeded subsample of this many rows
KNN = 5


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"this map needs `pip install {package}` (or pipeline's extra: "
                            f"`pip install 'pipeline[maps]'`)") from None


def _pca(X: np.ndarray, n: int, standardize: bool) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler(with_std=standardize).fit_transform(X)
    return PCA(min(n, *X.shape), random_state=SEED).fit_transform(X).astype(np.float32)


class PCAMap:
    """The first two principal components of the standardised features."""
    name, label, params = "pca", "PCA", {"standardize": True}

    def __init__(self, n_jobs: int = 1):
        self.n_jobs = n_jobs

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return _pca(X, 2, standardize=True)


class TSNEMap:
    """openTSNE (FFT-accelerated) on the first 50 principal components, as the study did.

    `ints_in_interval=2` (openTSNE's default is 1) halves the FFT grid: all 70k Fashion-MNIST raw pixels in
    71 s instead of 117 s on 2 cores, 5-NN accuracy in 2-D 0.837 instead of 0.840."""
    name, label, params = "tsne", "t-SNE", {"pca": 50, "perplexity": 30, "initialization": "pca",
                                            "negative_gradient_method": "fft", "ints_in_interval": 2}
    requires = ("openTSNE", "openTSNE")

    def __init__(self, n_jobs: int = 1):
        self.n_jobs = n_jobs

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        TSNE = _need("openTSNE", "openTSNE").TSNE
        p = self.params
        Z = _pca(X, p["pca"], standardize=False)
        emb = TSNE(perplexity=min(p["perplexity"], max(1, (len(Z) - 1) // 3)), initialization=p["initialization"],
                   negative_gradient_method=p["negative_gradient_method"],
                   ints_in_interval=p["ints_in_interval"], n_jobs=self.n_jobs,
                   random_state=SEED).fit(Z)
        return np.asarray(emb, dtype=np.float32)


def numba_cache_dir() -> Path:
    """Where UMAP's compiled code is kept: one folder per numba, umap-learn and pynndescent version, so an
    upgrade of any of them starts afresh (numba's own index only watches a function's source file).
    PIPELINE_NUMBA_CACHE moves it; deleting it only costs the next UMAP map its compilation."""
    from importlib.metadata import version

    base = os.environ.get("PIPELINE_NUMBA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pipeline", "numba")
    return Path(base) / "-".join(f"{d}{version(d)}" for d in ("numba", "umap-learn", "pynndescent"))


@functools.cache  # once per process
def cache_compiled() -> None:
    """Keep the machine code of umap-learn's and pynndescent's numba functions on disk, as if each declared
    `cache=True`.

    A fresh process otherwise compiles UMAP's functions before its first map: 20-35 s on 2 cores, which every
    `project` run and each worker process pays again. Functions that already cache (much of pynndescent) or
    cannot (numba warns "dynamic globals"; those compile as before) are left alone. The cached code is the
    code numba would compile, so maps are bit-identical. Best effort: a folder that cannot be written, a damaged
    cache file or a failed write only means compiling as before."""
    try:
        from numba.core import config
        from numba.core.caching import FunctionCache, NullCache
        from numba.core.registry import CPUDispatcher

        path = numba_cache_dir()
        path.mkdir(parents=True, exist_ok=True)
    except (ImportError, OSError, AttributeError):
        return

    class SafeFunctionCache(FunctionCache):
        """numba's own cache, except that a damaged file or a failed write (full disk, lost permission)
        means compiling as if there were no cache, never a failed map."""

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception:
                return None

        def save_overload(self, sig, data):
            with contextlib.suppress(Exception):
                super().save_overload(sig, data)

    old, config.CACHE_DIR = config.CACHE_DIR, str(path)  # read once, by each cache's locator, below
    try:
        for name, mod in list(sys.modules.items()):
            if mod is not None and name.split(".")[0] in ("umap", "pynndescent"):
                for f in list(vars(mod).values()):
                    if isinstance(f, CPUDispatcher) and isinstance(f._cache, NullCache):
                        with contextlib.suppress(Exception):  # e.g. no usable folder: it compiles as before
                            f._cache = SafeFunctionCache(f.py_func)  # what Dispatcher.enable_caching() does
    finally:
        config.CACHE_DIR = old


class UMAPMap:
    """umap-learn on the first 50 principal components (seeded, so reruns draw the same map: seeded, it runs
    on one core, so `project` draws the maps of several feature sets at once, in worker processes)."""
    name, label, params = "umap", "UMAP", {"pca": 50, "n_neighbors": 15, "min_dist": 0.1}
    requires = ("umap", "umap-learn")
    one_core = True

    def __init__(self, n_jobs: int = 1):
        self.n_jobs = n_jobs

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        import warnings

        umap = _need("umap", "umap-learn")
        cache_compiled()
        p = self.params
        Z = _pca(X, p["pca"], standardize=False)
        with warnings.catch_warnings():  # "n_jobs overridden by random_state": seeded runs are serial
            warnings.simplefilter("ignore", UserWarning)
            warnings.filterwarnings("ignore", "Cannot cache compiled function")  # those compile as before
            out = umap.UMAP(n_neighbors=min(p["n_neighbors"], len(Z) - 1), min_dist=p["min_dist"],
                            random_state=SEED).fit_transform(Z)
        return np.asarray(out, dtype=np.float32)


class CumlTSNEMap(TSNEMap):
    """cuML's t-SNE on a CUDA GPU (`--device cuda` with cuML installed): Barnes-Hut, not openTSNE's FFT."""
    params = {"pca": 50, "perplexity": 30, "method": "barnes_hut"}
    requires = ("cuml", "cuml-cu12")

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        from cuml.manifold import TSNE

        Z = _pca(X, self.params["pca"], standardize=False)
        p = self.params
        return np.asarray(TSNE(perplexity=p["perplexity"], method=p["method"], random_state=SEED).fit_transform(Z),
                          dtype=np.float32)


class CumlUMAPMap(UMAPMap):
    """cuML's UMAP on a CUDA GPU."""
    requires = ("cuml", "cuml-cu12")
    one_core = False

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        from cuml.manifold import UMAP

        Z = _pca(X, self.params["pca"], standardize=False)
        p = self.params
        return np.asarray(UMAP(n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                               random_state=SEED).fit_transform(Z), dtype=np.float32)


METHODS = {m.name: m for m in (PCAMap, TSNEMap, UMAPMap)}
GPU_METHODS = {"tsne": CumlTSNEMap, "umap": CumlUMAPMap}


def make_method(name: str, backend=None, n_jobs: int | None = None):
    """Name -> map method; cuML's t-SNE / UMAP where the backend is cuML (chosen once, in make_backend)."""
    if name not in METHODS:
        raise PipelineError(f"unknown map method {name!r}; choose from {','.join(METHODS)}")
    cuml = getattr(backend, "cuml", False)
    cls = GPU_METHODS[name] if cuml and name in GPU_METHODS else METHODS[name]
    return cls(n_jobs=n_jobs or os.cpu_count() or 1)


def check_methods(methods, backend=None) -> None:
    """Before any work: every method is known and its library installed (one line naming the install)."""
    from pipeline.compute import importable

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PipelineError(f"unknown map method {', '.join(unknown) or '(none given)'}; choose from "
                            f"{','.join(METHODS)}")
    for m in methods:
        method = make_method(m, backend)
        module, package = getattr(method, "requires", (None, None))
        if module and not importable(module):
            raise PipelineError(f"the {method.label} map needs `pip install {package}` (or pipeline's extra: "
                                f"`pip install 'pipeline[maps]'`); or leave it out, e.g. --methods pca")


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
        return np.load(npy, allow_pickle=False), meta
    except (OSError, ValueError):
        return None


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


def project(sets: list[FeatureSet], methods=("pca", "tsne", "umap"), out: Path = Path("reports/maps"),
            backend=None, n_jobs: int | None = None,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Map every feature set with every method (train and test rows together), score each map, cache the
    coordinates as out/<set>_<method>.npy with a .json beside it, and draw one figure per method with the
    feature sets side by side. Returns {method: [meta per feature set]}."""
    check_methods(methods, backend)
    check_comparable(sets)
    out = Path(out)
    with folder_lock(out, "pipeline project"):
        return _project(sets, methods, out, backend, n_jobs, log)


def _project(sets, methods, out: Path, backend, n_jobs, log) -> dict:
    from pipeline.figures import map_figure

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
