"""One-core refits (the RBF SVC: libsvm fits on one core) of the feature sets one after another against at
once (threads; libsvm releases the GIL), side by side in one run, on the `default` grid:

    python benchmarks/bench_refits_at_once.py [--features raw,efficientnet_lite0] [--data-dir DIR]

Prints the wall time of the whole `classify` call (search, refits, test predictions) each way, every
record's refit seconds, and whether the records (all but the timings) are the same, with the CPU named.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import feature_set_options  # noqa: E402

from pipeline.classical.search import classify  # noqa: E402
from pipeline.classical.specs import CLASSIFIERS  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402

TIMING = {"fit_seconds", "predict_seconds", "search_seconds"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap)
    ap.add_argument("--classifiers", default="svc")
    a = ap.parse_args()
    sets = [load_feature_set(f, a.dataset, a.data_dir, a.limit) for f in a.features.split(",")]
    clfs = a.classifiers.split(",")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {len(sets[0].y_train):,} train / {len(sets[0].y_test):,} "
          f"test rows; {', '.join(clfs)} on {', '.join(fs.name for fs in sets)}", flush=True)
    runs = {}
    for at_once in (False, True):
        for c in clfs:
            CLASSIFIERS[c].one_core_refit = at_once
        t = time.perf_counter()
        runs[at_once] = classify(sets, clfs, "default", 3, progress=False, log=lambda m: None)
        runs[at_once] = (time.perf_counter() - t, {(r["feature_set"], r["classifier"]): r for r in runs[at_once]})
    (t0, r0), (t1, r1) = runs[False], runs[True]
    print("\n| refits | classify wall (s) | " + " | ".join(f"{k[0]} {k[1]} refit (s)" for k in r0) + " |")
    print("|---|---|" + "---|" * len(r0))
    for name, (t, r) in (("one after another", runs[False]), ("at once", runs[True])):
        print(f"| {name} | {t:.1f} | " + " | ".join(f"{r[k]['fit_seconds']:.1f}" for k in r0) + " |")
    same = all({k: v for k, v in r0[k].items() if k not in TIMING} == {k: v for k, v in r1[k].items()
                                                                        if k not in TIMING} for k in r0)
    print(f"\nat once / one after another: {t1 / t0:.2f}× the wall time; records the same (but timings): {same}; "
          + ", ".join(f"{k[0]} {k[1]} test {r1[k]['test_accuracy']:.4f}" for k in r1))


if __name__ == "__main__":
    main()
