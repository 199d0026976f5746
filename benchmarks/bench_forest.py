"""The random forest's refit on all training rows, the largest step left in `classify`: the pipeline's forest
(200 trees on full-size bootstrap samples) against cheaper forests, side by side in one run, every core.

    python benchmarks/bench_forest.py [--features raw,efficientnet_lite0] [--data-dir DIR] [--leaf 1,2]

Each forest is fitted on all training rows at the `default` grid's chosen min_samples_leaf (raw pixels 1,
EfficientNet-Lite0 2 in the committed records) and scored on the test split. Prints seconds, the time
ratio to the pipeline's forest, test accuracy and the difference in points, with the CPU named.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import each_feature_set, feature_set_options  # noqa: E402

from pipeline.hardware import cpu_name  # noqa: E402

VARIANTS = {  # name: RandomForestClassifier parameters (random_state 0 for all, as the pipeline's)
    "200 trees (pipeline)": {"n_estimators": 200},
    "100 trees": {"n_estimators": 100},
    "200 trees, half-size bootstrap": {"n_estimators": 200, "max_samples": 0.5},
    "100 trees, half-size bootstrap": {"n_estimators": 100, "max_samples": 0.5},
}


def main():
    from sklearn.ensemble import RandomForestClassifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap)
    ap.add_argument("--leaf", default="1,2", help="min_samples_leaf per feature set, in --features order")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_name()}, {cores} cores (n_jobs={cores})", flush=True)
    print("\n| features | forest | fit s | ÷ pipeline's | test accuracy | Δ points |")
    print("|---|---|---|---|---|---|")
    for fs, leaf in each_feature_set(a, a.leaf, int):
        base = None
        for variant, params in VARIANTS.items():
            rf = RandomForestClassifier(min_samples_leaf=leaf, n_jobs=cores, random_state=0, **params)
            t = time.perf_counter()
            rf.fit(fs.X_train, fs.y_train)
            s = time.perf_counter() - t
            acc = float((rf.predict(fs.X_test) == fs.y_test).mean())
            base = base or (s, acc)
            print(f"| {fs.name} (leaf {leaf}) | {variant} | {s:.1f} | {s / base[0]:.2f} | {acc:.4f} | "
                  f"{100 * (acc - base[1]):+.2f} |", flush=True)
            del rf


if __name__ == "__main__":
    main()
