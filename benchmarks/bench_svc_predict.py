"""The RBF SVC's test predictions: libsvm (scikit-learn's SVC.predict; one call, and the test rows in chunks on
one thread per core, as this project predicted before) against `pipeline.classical.solvers.rbf_svc_predict` (the same
one-vs-one vote, the kernel by dense BLAS), side by side in one run, on the pipeline's RBF SVC refitted on all
training rows at the `default` grid's chosen C.

    python benchmarks/bench_svc_predict.py [--features raw,efficientnet_lite0] [--C 10,3] [--data-dir DIR]

Prints seconds, the speed-up, and how many predictions agree, with the CPU named.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import each_feature_set, feature_set_options  # noqa: E402

from pipeline.classical.solvers import rbf_svc_predict  # noqa: E402
from pipeline.classical.specs import CLASSIFIERS  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402


def timed(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return out, time.perf_counter() - t


def chunked(svc, Z, threads):
    with ThreadPoolExecutor(threads) as pool:  # libsvm releases the GIL while it predicts
        return np.concatenate(list(pool.map(svc.predict, np.array_split(Z, threads))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap)
    ap.add_argument("--C", default="10,3", help="C per feature set, in --features order (the committed records')")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_name()}, {cores} cores", flush=True)
    print("\n| features | C | support vectors | fit s | libsvm, one call s | libsvm, chunks on threads s "
          "| BLAS s | speed-up vs chunks | same predictions | test accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fs, C in each_feature_set(a, a.C, float):
        est, fit_s = timed(CLASSIFIERS["svc"].make(False).set_params(clf__C=C).fit, fs.X_train, fs.y_train)
        svc, Z = est[-1], est[:-1].transform(fs.X_test)
        one, one_s = timed(svc.predict, Z)
        chunks, chunks_s = timed(chunked, svc, Z, cores)
        blas, blas_s = timed(rbf_svc_predict, svc, Z)
        same = (blas == one).mean()
        print(f"| {fs.name} | {C:g} | {len(svc.support_vectors_):,} | {fit_s:.1f} | {one_s:.1f} | {chunks_s:.1f} | "
              f"{blas_s:.2f} | {chunks_s / blas_s:.1f}× | {same:.2%} ({(blas != one).sum()} differ; chunks "
              f"{(chunks == one).mean():.2%}) | {(blas == fs.y_test).mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
