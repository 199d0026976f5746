"""The whole study, old and new side by side in one run: README's main command (`pipeline run --backbone
efficientnet_lite0`) from a fresh checkout of each revision, each with a fresh `--out` and a fresh store,
on the same data and machine. Prints the stage table (seconds, ratio), every test accuracy and map score of
both, and the difference of each from the committed `reports/fashion-mnist/results.json` and maps.

    python benchmarks/bench_study.py --old REV [--new HEAD] [--data-dir DIR] [--limit N] [--keep DIR]
                                     [--store features/fashion-mnist/efficientnet_lite0]

Both checkouts run with this interpreter (the same installed libraries); a run takes 20-45 minutes on a
2-core machine with all 70,000 images. Without --keep, the checkouts and their outputs are removed after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.results import read_results  # noqa: E402

PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


STAGE1 = ["pipeline/embed", "pipeline/data", "pipeline/store/format.py", "pipeline/files.py",  # the stage-1 code
          # and where it lived before pipeline/ had subpackages (a revision on either side of that still compares)
          "pipeline/extract.py", "pipeline/engines.py", "pipeline/backbones.py", "pipeline/store.py",
          "pipeline/datasets.py"]


def run_rev(rev: str, work: Path, data_dir: str | None, limit: int | None, store_from: Path | None = None) -> dict:
    """README's main command in a fresh checkout of `rev`; `store_from`: a finished store (made by the same
    extraction code) placed in the checkout first, so that its extract stage is skipped. A checkout in `work`
    whose run finished is read, not run again (wall and peak RSS then come from its run.json: start-up and
    peak RSS unknown)."""
    tree = work / rev.replace("/", "_")
    out = tree / "study-out"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--backbone", "efficientnet_lite0", "--out", str(out)]
    cmd += ["--data-dir", data_dir] if data_dir else []
    cmd += ["--limit", str(limit)] if limit else []
    info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    if info.get("finished"):
        wall, peak = sum(s["seconds"] for s in info["stages"]), float("nan")
    else:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev], check=True,
                       capture_output=True)
        if store_from is not None:
            dest = tree / store_from.relative_to(store_from.parents[2])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(store_from, dest)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            sys.exit(f"{rev}: pipeline run failed:\n{p.stderr[-3000:]}")
        peak = int(p.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1e6
        info = json.loads((out / "run.json").read_text())
    results = {(r["feature_set"], r["classifier"]): r for r in read_results(out)}
    maps = {f.stem: json.loads(f.read_text()) for f in (out / "maps").glob("*.json")}
    return {"rev": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                                  text=True).stdout.strip(),
            "wall": wall, "peak_gb": peak, "stages": {s["stage"]: s["seconds"] for s in info["stages"]},
            "results": results, "maps": maps, "tree": tree,
            "store": tree / info["stores"][0]}  # an absolute path stays itself


def secs(rec: dict) -> float:
    return rec["search_seconds"] + rec["fit_seconds"] + rec["predict_seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the revision to compare against (e.g. the commit before)")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep the checkouts and their outputs in this folder (a "
                                                  "finished run found there is read, not run again)")
    ap.add_argument("--fresh-extract", action="store_true",
                    help="extract in both checkouts (default: the old one gets the new one's store when the two "
                         "revisions' stage-1 code is the same, and skips its extract stage)")
    ap.add_argument("--store", default=None,
                    help="a finished EfficientNet-Lite0 store (features/fashion-mnist/efficientnet_lite0, made by "
                         "the same stage-1 code) given to both checkouts: compares classify, project and report "
                         "only, without extracting")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-study-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        given = Path(a.store).resolve() if a.store else None
        new = run_rev(a.new, work, a.data_dir, a.limit, given)  # new first: its figures are the goal
        same = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", a.old, a.new, "--", *STAGE1]).returncode == 0
        share = same and not a.fresh_extract and given is None
        runs = [run_rev(a.old, work, a.data_dir, a.limit, given or (new["store"] if share else None)), new]
    finally:
        if not a.keep:
            for tree in work.iterdir():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    old, new = runs
    print(f"# {cpu_name()}, {os.cpu_count()} cores; `pipeline run --backbone efficientnet_lite0`"
          f"{f' --limit {a.limit}' if a.limit else ''}, fresh checkout and --out each; old {old['rev']}, "
          f"new {new['rev']}\n")
    print(f"| stage | old {old['rev']} (s) | new {new['rev']} (s) | new / old |\n|---|---|---|---|")
    for st in old["stages"]:
        o, n = old["stages"][st], new["stages"].get(st, float("nan"))
        if given is not None and st == "extract":
            print("| extract | (the given store) | (the given store) | |")
            continue
        if share and st == "extract":  # the same code: old's wall counts new's extraction
            old["wall"] += n - o
            print(f"| extract | (new's store: same stage-1 code) | {n:.0f} | 1.00 |")
            continue
        print(f"| {st} | {o:.0f} | {n:.0f} | {n / o if o else float('nan'):.2f} |")
    print(f"| **wall** | **{old['wall']:.0f}** | **{new['wall']:.0f}** | **{new['wall'] / old['wall']:.2f}** |")
    print(f"| peak RSS (GB) | {old['peak_gb']:.1f} | {new['peak_gb']:.1f} | |".replace("nan", "n/a"))
    committed = {}
    ref = ROOT / "reports" / "fashion-mnist" / "results.json"
    if ref.is_file() and not a.limit:
        committed = {(r["feature_set"], r["classifier"]): r for r in read_results(ref.parent)}
    print("\n| features | classifier | old test acc | new test acc | committed | new - committed (points) | "
          "old search+fit+predict s | new search+fit+predict s |\n|---|---|---|---|---|---|---|---|")
    for key, r in old["results"].items():
        n = new["results"].get(key)
        if n is None:
            continue
        c = committed.get(key, {}).get("test_accuracy")
        cs, delta = ("-", "-") if c is None else (f"{c:.4f}", f"{100 * (n['test_accuracy'] - c):+.2f}")
        print(f"| {key[0]} | {key[1]} | {r['test_accuracy']:.4f} | {n['test_accuracy']:.4f} | {cs} | {delta} | "
              f"{secs(r):.0f} | {secs(n):.0f} |")
    cmaps = {}
    if not a.limit:
        maps_dir = ROOT / "reports" / "fashion-mnist" / "maps"
        cmaps = {f.stem: json.loads(f.read_text()) for f in maps_dir.glob("*.json")}
    print("\n| map | old knn / trust | new knn / trust | committed knn / trust | old s | new s |\n"
          "|---|---|---|---|---|---|")
    for name, m in sorted(old["maps"].items()):
        n = new["maps"].get(name, {})
        c = cmaps.get(name, {})

        def pair(d):
            return f"{d['knn_accuracy']:.4f} / {d['trustworthiness']:.4f}" if "knn_accuracy" in d else "-"
        print(f"| {name} | {pair(m)} | {pair(n)} | {pair(c)} | {m.get('seconds', 0):.0f} | {n.get('seconds', 0):.0f} |")


if __name__ == "__main__":
    main()
