"""t-SNE's negative gradient: openTSNE's Barnes-Hut against its FFT interpolation, side by side in one run, on
the same PCA-50 input of the first N raw Fashion-MNIST pixels (train then test), for several N; seconds,
the ratio, and the 5-NN accuracy in 2-D. It sets `TSNEMap.BH_ROWS` (Barnes-Hut below it).

    python benchmarks/bench_tsne_gradient.py --data-dir DIR [--rows 160,2000,8000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.maps.methods import SEED, TSNEMap, _pca  # noqa: E402
from pipeline.maps.project import knn_accuracy  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402


def tsne(Z, method: str):
    from openTSNE import TSNE

    p = TSNEMap.params
    t = time.perf_counter()
    xy = TSNE(perplexity=min(p["perplexity"], max(1, (len(Z) - 1) // 3)), initialization=p["initialization"],
              negative_gradient_method=method, ints_in_interval=p["ints_in_interval"], n_jobs=1,
              random_state=SEED).fit(Z)
    return time.perf_counter() - t, xy


def main():
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="the four Fashion-MNIST IDX files")
    ap.add_argument("--rows", default="160,2000,8000", help="comma-separated row counts")
    a = ap.parse_args()
    fs = load_feature_set("raw", "fashion-mnist", a.data_dir)
    X, y = np.concatenate([fs.X_train, fs.X_test]), np.concatenate([fs.y_train, fs.y_test])
    print(f"CPU: {cpu_name()}, one thread each (n_jobs=1)")
    print(f"{'rows':>6} {'bh s':>7} {'fft s':>7} {'fft/bh':>7} {'5-NN bh':>8} {'5-NN fft':>9}")
    for n in map(int, a.rows.split(",")):
        Z = _pca(X[:n], TSNEMap.params["pca"], standardize=False)
        (tb, xb), (tf, xf) = tsne(Z, "bh"), tsne(Z, "fft")
        print(f"{n:>6} {tb:7.2f} {tf:7.2f} {tf / tb:7.2f} {knn_accuracy(xb, y[:n]):8.4f} "
              f"{knn_accuracy(xf, y[:n]):9.4f}", flush=True)


if __name__ == "__main__":
    main()
