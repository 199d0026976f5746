"""The map methods: each a small class behind one name (`METHODS`, `make_method`), cuML's t-SNE / UMAP
where the backend is cuML, torchdr's where it is the Array API. Optional libraries are imported when used and
fail with an install hint; UMAP's compiled code is kept on disk between processes (`cache_compiled`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import numpy as np

from pipeline.console import check_names
from pipeline.errors import PipelineError
from pipeline.hardware import importable

SEED = 0


def _need(module: str, package: str, extra: str = "maps"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"this map needs `pip install {package}` (or pipeline's extra: "
                            f"`pip install 'transfer-workbench[{extra}]'`)") from None


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
    """openTSNE on the first 50 principal components, as the study did: FFT-accelerated from BH_ROWS rows,
    Barnes-Hut below (benchmarks/bench_tsne_gradient.py: 6.8x faster on 160 rows, 1.5x on 2,000, 0.82x on
    4,000; docs/decisions.md#tsne-grid). `ints_in_interval=2` (openTSNE's default is 1) halves the FFT grid."""
    name, label, params = "tsne", "t-SNE", {"pca": 50, "perplexity": 30, "initialization": "pca",
                                            "negative_gradient_method": "bh below 3,000 rows, else fft",
                                            "ints_in_interval": 2}
    requires = ("openTSNE", "openTSNE")
    BH_ROWS = 3_000

    def __init__(self, n_jobs: int = 1):
        self.n_jobs = n_jobs

    def ran(self, rows: int) -> dict:
        """What a fit on `rows` rows runs, where the parameters leave it to the data."""
        return {"negative_gradient_method": "bh" if rows < self.BH_ROWS else "fft"}

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        TSNE = _need("openTSNE", "openTSNE").TSNE
        p = self.params
        Z = _pca(X, p["pca"], standardize=False)
        emb = TSNE(perplexity=min(p["perplexity"], max(1, (len(Z) - 1) // 3)), initialization=p["initialization"],
                   negative_gradient_method=self.ran(len(Z))["negative_gradient_method"],
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
    cache file or a failed write only means compiling as before (docs/decisions.md#umap-cache)."""
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


class _Torchdr:
    """A map by torchdr on the Array API backend's device, on the first 50 principal components."""
    requires, extra = ("torchdr", "torchdr"), "gpu"
    one_core = False

    def __init__(self, n_jobs: int = 1, device: str = "cpu"):
        self.n_jobs, self.device = n_jobs, device

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        import torch

        torchdr = _need("torchdr", "torchdr", "gpu")
        Z = torch.as_tensor(_pca(X, self.params["pca"], standardize=False), device=self.device)
        return self._estimator(torchdr, len(Z)).fit_transform(Z).detach().cpu().numpy().astype(np.float32)


class TorchdrTSNEMap(_Torchdr, TSNEMap):
    """torchdr's t-SNE in torch on the Array API backend's device (a CUDA GPU without cuML): exact affinities,
    perplexity 30, PCA initialisation. On the CPU it is far slower than openTSNE (3,000 Fashion-MNIST images:
    404 s against 5 s on 2 cores), so only an Array API backend uses it."""
    params = {"pca": 50, "perplexity": 30, "init": "pca", "knn": "exact"}

    def _estimator(self, torchdr, n: int):
        return torchdr.TSNE(perplexity=min(self.params["perplexity"], (n - 1) / 3), init="pca",
                            device=self.device, backend=None, random_state=SEED)


class TorchdrUMAPMap(_Torchdr, UMAPMap):
    """torchdr's UMAP in torch on the Array API backend's device, with umap-learn's map's n_neighbors and
    min_dist; exact neighbours (no faiss)."""

    def _estimator(self, torchdr, n: int):
        p = self.params
        return torchdr.UMAP(n_neighbors=min(p["n_neighbors"], n - 1), min_dist=p["min_dist"], device=self.device,
                            backend=None, random_state=SEED)


METHODS = {m.name: m for m in (PCAMap, TSNEMap, UMAPMap)}
GPU_METHODS = {"tsne": CumlTSNEMap, "umap": CumlUMAPMap}
ARRAY_API_METHODS = {"tsne": TorchdrTSNEMap, "umap": TorchdrUMAPMap}
DEFAULT_METHODS = tuple(METHODS)


def make_method(name: str, backend=None, n_jobs: int | None = None):
    """Name -> map method, for the backend chosen once in make_backend: cuML's t-SNE / UMAP where it is cuML,
    torchdr's on its device where it is the Array API (a CUDA GPU without cuML, or CPU tensors in tests),
    else openTSNE / umap-learn."""
    if name not in METHODS:
        raise PipelineError(f"unknown map method {name!r}; choose from {','.join(METHODS)}")
    n_jobs = n_jobs or os.cpu_count() or 1
    if getattr(backend, "cuml", False) and name in GPU_METHODS:
        return GPU_METHODS[name](n_jobs=n_jobs)
    if getattr(backend, "array_api", False) and name in ARRAY_API_METHODS:
        return ARRAY_API_METHODS[name](n_jobs=n_jobs, device=backend.device)
    return METHODS[name](n_jobs=n_jobs)


def check_methods(methods, backend=None) -> None:
    """Before any work: every method is known and its library installed (one line naming the install)."""
    check_names("map method", methods, METHODS, sep=",")
    for m in methods:
        method = make_method(m, backend)
        module, package = getattr(method, "requires", (None, None))
        if module and not importable(module):
            extra = getattr(method, "extra", "maps")
            raise PipelineError(f"the {method.label} map needs `pip install {package}` (or pipeline's extra: "
                                f"`pip install 'transfer-workbench[{extra}]'`); or leave it out, e.g. --methods pca")
