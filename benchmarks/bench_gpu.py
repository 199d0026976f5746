"""The whole study on one device, stage by stage: extract (ResNet-18 with random weights, EfficientNet-Lite0
with its real ImageNet weights), classify raw pixels and both embeddings, draw the maps; one table of stage,
device, seconds, img/s and the backend each classifier actually ran on.

    python benchmarks/bench_gpu.py --data-dir DIR [--device auto|cuda|cpu] [--grid default] \
                                   [--methods pca,tsne,umap] [--limit N] [--json FILE]
    python benchmarks/bench_gpu.py --smoke       # tiny synthetic data on whatever device is here (CI runs it)
    python benchmarks/bench_gpu.py --compare NEW.json [--against OLD.json] [--records results.json]

--compare prints, side by side, the stages' wall seconds and each (feature set, classifier)'s seconds and test
accuracy of two such runs (e.g. this code and an earlier commit's on the same machine), and each accuracy's
distance from the CPU records of a results.json (flagged beyond 0.3 points).

On a GPU machine: extract's figure "loop img/s" is the engine alone on uint8 batches already in memory
(upload, resize and normalise on the device, bf16 forward, copy-back), after two warm-up batches;
"extract img/s" is the whole `pipeline extract` (reading, store writes), as its meta records it; "seconds"
include model build and, for the first call, CUDA start-up. The backend is built before anything imports
scikit-learn, so cuML's accelerator (where installed) hooks it as the CLI does. ResNet-18 runs with random
weights (speed does not depend on their values; ImageNet's cannot be downloaded offline).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.classical.backends import make_backend  # noqa: E402  (first: cuml.accel must precede scikit-learn)


def hardware(device) -> str:
    import torch

    from pipeline.hardware import cpu_name

    cpu = f"{cpu_name()} ({os.cpu_count()} cores)"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}; "
                f"{cpu}")
    return f"{cpu}, torch {torch.__version__}"


def synthetic_idx(root: Path, n_train: int, n_test: int) -> Path:
    """A tiny Fashion-MNIST-shaped IDX dataset whose images depend on the label (for --smoke)."""
    import numpy as np

    from pipeline.data import write_idx

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * c:5 + 2 * c] = 220
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    return root


def loop_rate(backbone, dataset, device: str, precision: str, max_images: int) -> tuple[float, int, dict]:
    """Engine-only img/s over uint8 batches in memory (two warm-up batches not counted)."""
    import torch

    from pipeline.embed.engines import make_engine

    eng = make_engine(backbone, device, precision)
    bs = eng.default_batch_size()
    images = dataset.splits["train"].images[:max_images]
    batches = [images[a:a + bs] for a in range(0, len(images), bs)]
    for _ in eng.map(batches[:2]):
        pass
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = sum(len(f) for f in eng.map(batches))
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t), bs, eng.describe()


STAGES = ("load", "extract", "classify", "maps")


def _stage_seconds(run: dict) -> dict:
    """Each stage's wall seconds: its rows that time a whole step (load, and the rows with ' all ')."""
    out = dict.fromkeys(STAGES, 0.0)
    for r in run["rows"]:
        if r["seconds"] is not None and (r["stage"] == "load" or " all " in r["what"]):
            out[r["stage"]] += r["seconds"]
    return out


def _fits(run: dict) -> dict:
    """(feature set, classifier) -> (seconds, test accuracy, device) from a run's classify rows."""
    import re

    out = {}
    for r in run["rows"]:
        m = re.fullmatch(r"(\S+) (\S+) \(test ([0-9.]+)\)", r["what"]) if r["stage"] == "classify" else None
        if m:
            out[m[1], m[2]] = (r["seconds"], float(m[3]), r["device"])
    return out


def _maps(run: dict) -> set:
    """(feature set, method) of a run's maps."""
    return {tuple(r["what"].split()[:2]) for r in run["rows"] if r["stage"] == "maps" and "(5-NN" in r["what"]}


def compare(new_path: str, old_path: str | None = None, records: str | None = None) -> None:
    new = json.loads(Path(new_path).read_text())
    old = json.loads(Path(old_path).read_text()) if old_path else None
    cpu = {(r["feature_set"], r["classifier"]): r["test_accuracy"]
           for r in json.loads(Path(records).read_text()) if r.get("kind") != "curve"} if records else {}
    covers = []
    for name, run in (("new", new), ("old", old)):
        if run:
            print(f"# {name}: {run['hardware']}; backend {run['backend']}"
                  + ("" if run.get("complete", True) else " (cut short: the rows it finished)"))
            sets = dict.fromkeys(k[0] for k in _fits(run))
            maps = dict.fromkeys(m for _, m in sorted(_maps(run)))
            covers.append(f"# {name} covers: classify {', '.join(sets) or 'nothing'}; maps {', '.join(maps) or 'none'}")
    print("\n".join(covers))
    ns, os_ = _stage_seconds(new), _stage_seconds(old) if old else {}
    nf, of = _fits(new), _fits(old) if old else {}
    same = {"classify": set(nf) == set(of), "maps": _maps(new) == _maps(old) if old else False}
    same["total"] = same["classify"] and same["maps"]
    print("\n| stage | old s | new s | old / new |\n|---|---|---|---|")
    for st in (*STAGES, "total"):
        a = sum(os_.values()) if st == "total" and old else os_.get(st)
        b = sum(ns.values()) if st == "total" else ns[st]
        ratio = f"{a / b:.1f}×" if a and b and same.get(st, True) else "– (not the same work)" if a else "–"
        print(f"| {st} | {f'{a:.1f}' if a is not None else '–'} | {b:.1f} | {ratio} |")
    both = [k for k in nf if k in of]
    if both and not same["classify"]:
        a, b = sum(of[k][0] for k in both), sum(nf[k][0] for k in both)
        print(f"| classify, the {len(both)} fits both ran (sum of their seconds) | {a:.1f} | {b:.1f} | "
              f"{a / b:.1f}× |")
    print("\n| features | classifier | old s | new s | old test | new test | new − CPU record (pt) | new ran on |")
    print("|---|---|---|---|---|---|---|---|")
    far, checked = [], [k for k in nf if k in cpu]
    for key, (sec, acc, dev) in nf.items():
        o = of.get(key)
        ref = cpu.get(key)
        gap = f"{(acc - ref) * 100:+.2f}" if ref is not None else "–"
        if ref is not None and abs(acc - ref) > 0.003:
            far.append(key)
        print(f"| {key[0]} | {key[1]} | {f'{o[0]:.1f}' if o else '–'} | {sec:.1f} | {f'{o[1]:.4f}' if o else '–'} "
              f"| {acc:.4f} | {gap}{' (beyond 0.3)' if key in far else ''} | {dev} |")
    if cpu:
        print(f"\n# {len(checked) - len(far)} of {len(checked)} accuracies within 0.3 points of the CPU records"
              + (f"; beyond: {far}" if far else ""))


def main():
    if "--compare" in sys.argv:
        cp = argparse.ArgumentParser()
        cp.add_argument("--compare", required=True)
        cp.add_argument("--against", default=None)
        cp.add_argument("--records", default=None)
        a = cp.parse_args()
        return compare(a.compare, a.against, a.records)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (default: as `pipeline extract`)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--grid", default="default")
    ap.add_argument("--classifiers", default="lda,qda,logreg,linsvc,rf,svc,knn")
    ap.add_argument("--methods", default="pca,tsne,umap")
    ap.add_argument("--classify-sets", default="raw,resnet18,efficientnet_lite0",
                    help="feature sets to classify (a long run can be split over calls)")
    ap.add_argument("--map-sets", default="raw,resnet18,efficientnet_lite0", help="feature sets to map")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--loop-images", type=int, default=60000, help="images for the engine-only loop")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data, quick grid, 64-px images, PCA maps")
    args = ap.parse_args()

    backend = make_backend(args.device)  # before scikit-learn is imported

    from pipeline.classical.search import classify
    from pipeline.data import load_dataset
    from pipeline.embed.backbones import build_backbone
    from pipeline.embed.extract import extract
    from pipeline.embed.request import ExtractRequest
    from pipeline.hardware import resolve_device
    from pipeline.maps.project import project
    from pipeline.store.featuresets import load_feature_set

    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    if args.smoke:
        args.data_dir = str(synthetic_idx(tmp / "data", 120, 40))
        args.grid, args.methods, args.loop_images, args.image_size = "quick", "pca", 256, 64
    device = resolve_device(args.device)
    print(f"# {hardware(device)}; classical ML backend: {backend.name}", flush=True)
    rows = []

    def save(complete: bool, total: float | None = None):
        if args.json:
            Path(args.json).write_text(json.dumps({"hardware": hardware(device), "backend": backend.name,
                                                   "smoke": args.smoke, "complete": complete, "rows": rows,
                                                   "total_seconds": total}, indent=1))

    def row(stage, what, seconds, dev, rate=None, backend_label=""):
        rows.append({"stage": stage, "what": what, "device": dev,
                     "seconds": round(seconds, 2) if seconds is not None else None,
                     "img_per_s": round(rate, 1) if rate else None, "backend": backend_label})
        save(complete=False)  # each row kept as it comes: a run cut short by its time limit still compares
        secs = f"{seconds:9.2f} s" if seconds is not None else f"{'–':>11}"
        print(f"{stage:<9} {what:<52} {dev[:28]:<28} {secs}  {f'{rate:,.0f} img/s' if rate else '':>14}"
              f"  {backend_label}", flush=True)

    t = time.perf_counter()
    dataset = load_dataset("fashion-mnist", args.data_dir, args.limit)
    row("load", f"fashion-mnist ({sum(map(len, dataset.splits.values())):,} images)", time.perf_counter() - t, "cpu")

    stores = {}
    for name, weights in (("resnet18", "none"), ("efficientnet_lite0", "imagenet")):
        bb = build_backbone(name, weights, image_size=args.image_size)
        rate, bs, desc = loop_rate(bb, dataset, args.device, args.precision, args.loop_images)
        row("extract", f"{name} loop (batch {bs}, {desc['precision']}, {desc['engine']})", None,
            desc["device_name"], rate)
        t = time.perf_counter()
        req = ExtractRequest(data_dir=args.data_dir, limit=args.limit, backbone=name, weights=weights,
                             image_size=args.image_size, device=args.device, precision=args.precision,
                             out=tmp / "features" / name)
        res = extract(req, dataset=dataset, backbone=bb, progress=False, log=lambda m: None)
        row("extract", f"{name} all {res.images:,} images into a store", time.perf_counter() - t,
            desc["device_name"], res.img_per_s)
        stores[name] = res.path

    sets = [load_feature_set("raw", "fashion-mnist", args.data_dir, args.limit)] + \
        [load_feature_set(str(p), "fashion-mnist") for p in stores.values()]
    # one call over every feature set, as `pipeline run` classifies: RBF SVC refits at once, the classifiers
    # with no device formulation on the host's cores beside the others
    t = time.perf_counter()
    classified = [s for s in sets if s.name in args.classify_sets.split(",")]
    recs = classify(classified, args.classifiers.split(","), args.grid, 3, backend=backend, progress=False,
                    log=lambda m: None)
    wall = time.perf_counter() - t
    for r in recs:
        row("classify", f"{r['feature_set']} {r['classifier']} (test {r['test_accuracy']:.4f})",
            r["search_seconds"] + r["fit_seconds"] + r["predict_seconds"], r["device"], None, r["backend"])
    ran = dict.fromkeys(d for r in recs for d in r["device"].split(" + "))  # what ran, not what was asked
    row("classify", f"{len(classified)} feature sets: all {len(recs)} fits, one call", wall, " + ".join(ran))

    mapped = [s for s in sets if s.name in args.map_sets.split(",")]
    for m in args.methods.split(","):
        t = time.perf_counter()
        done = project(mapped, [m], tmp / "maps", backend, log=lambda m: None)[m]
        wall = time.perf_counter() - t
        for meta in done:
            row("maps", f"{meta['feature_set']} {m} (5-NN {meta['knn_accuracy']:.3f})", meta["seconds"],
                "cuda" if meta["implementation"].startswith("Cuml") else backend.device
                if meta["implementation"].startswith("Torchdr") else "cpu", None, meta["implementation"])
        row("maps", f"{m} all {len(done)} maps (wall: maps of one method may run at once)", wall, "")

    total = sum(r["seconds"] for r in rows if r["stage"] == "load" or " all " in r["what"])
    print(f"# whole study (load + extract both + classify all + maps): {total:.1f} s")
    save(complete=True, total=total)


if __name__ == "__main__":
    main()
