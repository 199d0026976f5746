"""Stage 2: the `default` grid against the exhaustive `full` grid, side by side in one run, per classifier:
search+refit seconds, the time ratio, and the test-accuracy gap.

    python benchmarks/bench_classify.py --features efficientnet_lite0 [--limit N] [--classifiers ...]

`default` tunes its small grids on a stratified subsample (10k rows) and refits on the whole training split;
`full` tunes the bigger grids on the whole training split. Both use the same folds (--cv, 3 by default), so
the comparison is of the presets. On 2 cores `full` at 60k rows takes hours, so pass --limit to compare at a
size that fits (say which in LOG.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import feature_set_options  # noqa: E402

from pipeline.classical.search import classify  # noqa: E402
from pipeline.classical.specs import DEFAULT_CLASSIFIERS  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap, "efficientnet_lite0")
    ap.add_argument("--classifiers", default=",".join(DEFAULT_CLASSIFIERS))
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the records here")
    a = ap.parse_args()
    fs = load_feature_set(a.features, a.dataset, a.data_dir, a.limit)
    clfs = a.classifiers.split(",")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {fs.name}: {len(fs.y_train):,} train / "
          f"{len(fs.y_test):,} test, {fs.X_train.shape[1]} features", flush=True)
    runs = {}
    for grid in ("default", "full"):
        t = time.perf_counter()
        runs[grid] = {r["classifier"]: r for r in classify([fs], clfs, grid, a.cv, progress=False)}
        print(f"{grid}: {time.perf_counter() - t:.0f} s in all", flush=True)
    print("\n| classifier | default: s | default: test acc | full: s | full: test acc | time ratio full/default "
          "| accuracy gap (default − full) |")
    print("|---|---|---|---|---|---|---|")
    tot = {"default": 0.0, "full": 0.0}
    for c in clfs:
        d, f = runs["default"][c], runs["full"][c]
        ds, fsec = (r["search_seconds"] + r["fit_seconds"] + r["predict_seconds"] for r in (d, f))
        tot["default"] += ds
        tot["full"] += fsec
        print(f"| {d['label']} | {ds:.0f} | {d['test_accuracy']:.4f} | {fsec:.0f} | {f['test_accuracy']:.4f} | "
              f"{fsec / ds:.1f}× | {100 * (d['test_accuracy'] - f['test_accuracy']):+.2f} pt |")
    print(f"| all | {tot['default']:.0f} | | {tot['full']:.0f} | | {tot['full'] / tot['default']:.1f}× | |")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
