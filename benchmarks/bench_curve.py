"""The label-efficiency curve's time (`pipeline curve`, the `curve` stage of `pipeline run`) on stored features:
the whole curve of each feature set, per classifier, into a fresh folder, the CPU named; with --jobs A,B the
same curve run with each number of worker processes, side by side in one run, and their ratio.

    python benchmarks/bench_curve.py --features raw,efficientnet_lite0 [--data-dir DIR] [--limit N] [--jobs 1,2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.classical import curve as lc  # noqa: E402
from pipeline.hardware import cpu_label  # noqa: E402
from pipeline.store.featuresets import load_feature_sets  # noqa: E402


def timed_curve(sets, jobs: int | None) -> tuple[float, Counter, list[dict]]:
    """One whole curve in a new folder -> (wall seconds, fit seconds per (feature set, classifier), records)."""
    with tempfile.TemporaryDirectory(prefix="bench_curve-") as out:
        t = time.perf_counter()
        recs = lc.curve(sets, Path(out), log=lambda m: None, progress=False, n_jobs=jobs)
        wall = time.perf_counter() - t
    per = Counter()
    for r in recs:
        per[(r["feature_set"], r["classifier"])] += r["fit_seconds"]
    return wall, per, recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="raw,efficientnet_lite0")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--jobs", default="0", help="worker processes per run, comma-separated (0: every core)")
    args = ap.parse_args()
    t = time.perf_counter()
    sets = load_feature_sets(args.features, args.dataset, args.data_dir, args.limit)
    print(f"# {cpu_label()}; {', '.join(f'{s.name} {s.X_train.shape}' for s in sets)}; loaded in "
          f"{time.perf_counter() - t:.1f} s")
    walls, first = {}, None
    for jobs in (int(j) for j in args.jobs.split(",")):
        wall, per, recs = timed_curve(sets, jobs or None)
        walls[jobs] = wall
        print(f"\n## --jobs {jobs or 'every core'}: {wall:.1f} s for {len(recs)} points\n")
        print("| features | classifier | fit seconds |\n|---|---|---|")
        for (s, c), sec in per.items():
            print(f"| {s} | {c} | {sec:.1f} |")
        for b in lc.break_even(recs):
            print(f"\n{lc.statement(b)}")
        same = first is None or [r["draws"] for r in recs] == [r["draws"] for r in first]
        first = first or recs
        print(f"\nthe same draws and accuracies as the first run: {same}")
    if len(walls) > 1:
        base = next(iter(walls.values()))
        print("\n" + ", ".join(f"jobs {j}: {w / base:.2f}x the first" for j, w in walls.items()))


if __name__ == "__main__":
    main()
