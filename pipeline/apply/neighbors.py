"""Nearest neighbours in an embedding: the one search the retrieval score, `pipeline neighbors` (new photos
against a store's training images) and its contact sheet use. Cosine distance, exact (brute force)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.apply import NEIGHBORS_K
from pipeline.apply.featurize import Log, collect_images, featurize
from pipeline.console import stderr
from pipeline.data.images import show_path
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, refuse_to_replace
from pipeline.render import csvfile
from pipeline.store.featuresets import FeatureSet, load_feature_set, source_images
from pipeline.store.format import load_features

METRIC = "cosine"


def nearest(X_train: np.ndarray, X_query: np.ndarray, k: int, n_jobs: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (n_query, k): the k training rows nearest each query, nearest first (cosine
    distance, exact; ties by index, as scikit-learn's brute force orders them)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(X_train))
    nn = NearestNeighbors(n_neighbors=k, metric=METRIC, algorithm="brute", n_jobs=n_jobs).fit(X_train)
    dist, idx = nn.kneighbors(X_query)
    return idx, dist


def precision_at_k(idx: np.ndarray, y_train: np.ndarray, y_query: np.ndarray) -> float:
    """The mean share of each query's neighbours that have its label."""
    return float((np.asarray(y_train)[idx] == np.asarray(y_query)[:, None]).mean()) if len(idx) else float("nan")


def store_set(store: str | Path) -> FeatureSet:
    """A store as a feature set, whatever dataset it holds."""
    f = load_features(store)
    return load_feature_set(str(store), f.meta.get("dataset", {}).get("name"))


def neighbors(store: str | Path, inputs, k: int = NEIGHBORS_K, out: str | Path | None = None, device: str = "auto",
              weights: str | None = None, log: Log = stderr, overwrite: bool = False) -> list[dict]:
    """Each image embedded with the store's own recipe, then its k nearest training images: one row per
    (query, rank) with the neighbour's index, label, distance and file (image folders). With `out`, writes
    `out/neighbors.csv` and a contact sheet `out/neighbors.html`."""
    if k < 1:
        raise PipelineError(f"-k must be at least 1, not {k}")
    if out is not None:
        there = [n for n in ("neighbors.csv", "neighbors.html") if (Path(out) / n).exists()]
        if there and not overwrite:
            raise PipelineError(f"{out} already holds {' and '.join(there)}; pass --overwrite to replace them, or "
                                f"choose another --out")
        for name in there:  # a FIFO, device or link named like them: never replaced
            refuse_to_replace(Path(out) / name, True)
    fs = store_set(store)
    if fs.name == "raw" or "backbone" not in fs.meta:
        raise PipelineError(f"{store}: not an embedding store (no backbone recipe to embed new images with)")
    if not len(fs.y_train):
        raise PipelineError(f"{store} holds no training images to search (a class-folder root is a test set); "
                            f"extract a dataset with a training split")
    files = collect_images(inputs)
    X = featurize(fs.recipe, files, device=device, weights=weights, log=log)
    idx, dist = nearest(fs.X_train, X, k)
    ds = source_images(fs)
    train = ds.splits["train"]
    rows = []
    for q, f in enumerate(files):
        for rank, (j, d) in enumerate(zip(idx[q], dist[q]), 1):
            rows.append({"query": show_path(f), "rank": rank, "train_index": int(j),
                         "label": fs.classes[int(fs.y_train[j])], "distance": float(d),
                         "path": show_path(train.files[j]) if train.files is not None else ""})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cols = ["query", "rank", "train_index", "label", "distance", "path"]
        atomic_write(out / "neighbors.csv", csvfile.write(cols, [[f"{r[c]:.6f}" if c == "distance" else r[c]
                                                                 for c in cols] for r in rows]))
        from pipeline.data.images import decode_image
        from pipeline.render.sheets import contact_sheet

        queries = [(show_path(f), decode_image(f)) for f in files]
        found = [[(train.batch(int(j), int(j) + 1)[0], fs.classes[int(fs.y_train[j])], float(d))
                  for j, d in zip(idx[q], dist[q])] for q in range(len(files))]
        atomic_write(out / "neighbors.html", contact_sheet(f"nearest training images in {fs.name}", queries, found))
    return rows
