"""The RBF SVC's fit: libsvm computing its kernel itself (scikit-learn's SVC) against libsvm handed the exact
kernel computed where the rows are (`ArraySVC(precompute=True)`: float64 products on the device, copied to
the host, `kernel="precomputed"`), side by side in one run, on the pipeline's own scaled and PCA-reduced rows
(the RBF SVC's first two steps) of stratified training subsets of the sizes given.

    python benchmarks/bench_svc_fit.py [--features raw,efficientnet_lite0] [--rows 6667,20000] [--C 10]
                                       [--device auto|cpu|cuda] [--data-dir DIR]

6,667 rows is one fold of the `default` search (3 folds of 10,000); the refit sees all 60,000. Prints the
device and CPU, seconds for the kernel and for libsvm's fit, the speed-up of the whole fit, whether the two
models have the same support vectors (and how far their dual coefficients are apart), and how many test
predictions agree. It keeps precompute for `auto` only where it is faster with the same model.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import feature_set_options  # noqa: E402


def timed(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return out, time.perf_counter() - t


def main():
    import torch
    from sklearn.base import clone
    from sklearn.svm import SVC

    from pipeline.classical.search import stratified_subsample
    from pipeline.classical.solvers import ArraySVC
    from pipeline.classical.specs import CLASSIFIERS
    from pipeline.hardware import cpu_label, device_name, resolve_device
    from pipeline.store.featuresets import load_feature_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap)
    ap.add_argument("--rows", default="6667,20000", help="training rows per fit (comma-separated)")
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--device", default="auto", help="where ArraySVC computes the kernel")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    print(f"kernel on: {device_name(dev)}; libsvm on: {cpu_label()}; torch {torch.__version__}", flush=True)
    print("\n| features | rows | libsvm (own kernel) s | kernel on device s | libsvm (precomputed) s "
          "| ArraySVC fit, all of it s | speed-up | same support vectors | test predictions agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.features.split(","):
        fs = load_feature_set(name, a.dataset, a.data_dir, a.limit)
        for n in map(int, a.rows.split(",")):
            idx = stratified_subsample(fs.y_train, n)
            prep = clone(CLASSIFIERS["svc"].make(False)[:-1]).fit(fs.X_train[idx])
            Z, Zt, y = prep.transform(fs.X_train[idx]), prep.transform(fs.X_test), fs.y_train[idx]
            ref, ref_s = timed(SVC(C=a.C, gamma="scale", cache_size=1000).fit, Z, y)
            rows = torch.as_tensor(Z, device=dev)
            ours, ours_s = timed(ArraySVC(C=a.C, cache_size=1000, precompute=True).fit, rows, torch.as_tensor(y))
            K, kernel_s = timed(ours._kernel, rows.to(torch.float64))  # the same kernel again, alone ...
            _, libsvm_s = timed(SVC(C=a.C, kernel="precomputed", cache_size=1000).fit, K, y)  # ... and libsvm on it
            del K
            same = np.array_equal(ours.support_, ref.support_)
            gap = f", dual coefficients within {np.abs(ours.dual_coef_ - ref.dual_coef_).max():.1e}" if same else \
                f" (no: {len(ours.support_):,} vs {len(ref.support_):,})"
            agree = (np.asarray(ours.predict(torch.as_tensor(Zt, device=dev)).cpu()) == ref.predict(Zt))
            print(f"| {fs.name} | {len(y):,} | {ref_s:.2f} | {kernel_s:.2f} | {libsvm_s:.2f} | {ours_s:.2f} "
                  f"| {ref_s / ours_s:.2f}× | {'yes' if same else ''}{gap} | {agree.mean():.2%} "
                  f"({(~agree).sum()} differ) |", flush=True)


if __name__ == "__main__":
    main()
