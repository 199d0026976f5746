"""Maps: scikit-learn's Barnes-Hut t-SNE against openTSNE (FFT) and umap-learn, side by side
in one run, on the same PCA-50 input and the same rows; seconds, the ratio, and the 5-NN accuracy in 2-D.

    python benchmarks/bench_maps.py --features efficientnet_lite0 --rows 10000 [--data-dir DIR]

`pipeline project` times every map it makes (see maps/*.json); this script puts the library choice beside
the alternative. umap-learn's time includes its one-off numba compilation, as in a fresh `pipeline` process.
--rows 70000 takes scikit-learn's t-SNE several minutes on 2 cores.
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

from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.maps.methods import SEED, TSNEMap, UMAPMap, _pca  # noqa: E402
from pipeline.maps.project import knn_accuracy  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402


def sklearn_tsne(X):
    from sklearn.manifold import TSNE

    return TSNE(perplexity=30, init="pca", random_state=SEED, n_jobs=os.cpu_count()).fit_transform(
        _pca(X, 50, standardize=False))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap, "efficientnet_lite0")
    ap.add_argument("--rows", type=int, default=10000, help="first N rows of train+test")
    a = ap.parse_args()
    fs = load_feature_set(a.features, a.dataset, a.data_dir, a.limit)
    X = np.concatenate([fs.X_train, fs.X_test])[:a.rows].astype(np.float32)
    y = np.concatenate([fs.y_train, fs.y_test])[:a.rows].astype(np.int64)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {fs.name}: {len(X):,} points, {X.shape[1]} features",
          flush=True)
    rows = []
    for name, fn in (("scikit-learn TSNE (Barnes-Hut)", sklearn_tsne),
                     ("openTSNE (FFT), as pipeline uses", TSNEMap(os.cpu_count()).fit_transform),
                     ("umap-learn, as pipeline uses", UMAPMap().fit_transform)):
        t = time.perf_counter()
        Z = fn(X)
        s = time.perf_counter() - t
        rows.append((name, s, knn_accuracy(Z, y)))
        print(f"{name}: {s:.1f} s", flush=True)
    base = rows[0][1]
    print("\n| implementation | seconds | speed-up vs scikit-learn | 5-NN accuracy in 2-D |\n|---|---|---|---|")
    for name, s, acc in rows:
        print(f"| {name} | {s:.1f} | {base / s:.1f}× | {acc:.4f} |")


if __name__ == "__main__":
    main()
