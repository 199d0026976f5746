"""Which backbone, input size and precision to extract with: the sweep, side by side in one run.

For raw pixels, ResNet-18 (random weights: a floor, its ImageNet file cannot be had offline),
EfficientNet-Lite0 at 96 / 128 / 160 / 192 / 224 px, Lite1 (240 px) and Lite2 (260 px), each extracted in
fp32 and int8 (and bf16 at the Lite models' native sizes where the CPU has it), all through the OpenVINO
engine so that only the precision differs: the extraction's in-loop img/s on this CPU, and on each store the
test accuracy of logistic regression (the quick grid, 3-fold CV) and of the MLP head (`pipeline train`'s
defaults). Fashion-MNIST, a stratified subset (--train / --test images, seed 0) unless --train 60000.

    python benchmarks/bench_sweep.py [--data-dir DIR] [--train 10000] [--test 5000] [--out DIR]

Stores, records and the int8 cache go under --out; a rerun reuses what is there (its img/s is then the one
measured when the store was made) and redraws the table and the figure (--figure).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.classical.search import classify, stratified_subsample  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.data.dataset import Dataset, Split  # noqa: E402
from pipeline.embed.extract import extract  # noqa: E402
from pipeline.embed.request import ExtractRequest  # noqa: E402
from pipeline.hardware import cpu_has_bf16, cpu_label  # noqa: E402
from pipeline.models.heads import HeadSpec  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402
from pipeline.train.config import TrainRequest  # noqa: E402
from pipeline.train.heads import train_head  # noqa: E402

# (label, backbone, weights, image size)
CONFIGS = [("ResNet-18 (random)", "resnet18", "none", 224)] + \
    [(f"Lite0 {s} px", "efficientnet_lite0", "imagenet", s) for s in (96, 128, 160, 192, 224)] + \
    [("Lite1 240 px", "efficientnet_lite1", "imagenet", 240), ("Lite2 260 px", "efficientnet_lite2", "imagenet", 260)]
NATIVE = {"Lite0 224 px", "Lite1 240 px", "Lite2 260 px"}


def subset_rows(ds: Dataset, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Each split's stratified sample (seed 0), in order: the same rows for the images and the raw pixels."""
    return {name: np.sort(stratified_subsample(ds.splits[name].labels, n if n < len(ds.splits[name]) else None))
            for name, n in (("train", n_train), ("test", n_test))}


def subset(ds: Dataset, rows: dict[str, np.ndarray]) -> Dataset:
    splits = {name: Split(name, ds.splits[name].labels[r], ds.splits[name].images[r]) for name, r in rows.items()}
    return Dataset(ds.name, ds.classes, splits, ds.source)


def scores(fs, out: Path) -> dict:
    """Test accuracy of logistic regression (quick grid) and of the MLP head on one feature set."""
    out.mkdir(parents=True, exist_ok=True)
    done = out / "scores.json"
    if done.exists():
        return json.loads(done.read_text())
    quiet = lambda m: None  # noqa: E731
    t = time.perf_counter()
    lr = classify([fs], ["logreg"], grid="quick", cv=3, progress=False, log=quiet)[0]
    t_lr = time.perf_counter() - t
    t = time.perf_counter()
    mlp = train_head(fs, TrainRequest(head=HeadSpec("mlp"), out=out / "mlp"), progress=False, log=quiet)
    res = {"logreg": lr["test_accuracy"], "mlp": mlp["test_accuracy"], "logreg_s": round(t_lr, 1),
           "mlp_s": round(time.perf_counter() - t, 1)}
    done.write_text(json.dumps(res))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="the four Fashion-MNIST IDX files [default: found as the CLI "
                                                     "finds them]")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--out", default="benchmarks/out/sweep")
    ap.add_argument("--configs", default=None, help="comma-separated labels' first words to keep, e.g. Lite0,raw")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--figure", default=None, help="write the accuracy-against-speed figure here (PNG)")
    ap.add_argument("--redraw", default=None, metavar="SWEEP_JSON", help="only print the table and draw the "
                                                                        "figure of a finished run's sweep.json")
    a = ap.parse_args()
    if a.redraw:
        return redraw(Path(a.redraw), Path(a.figure) if a.figure else None)
    out = Path(a.out)
    os.environ.setdefault("PIPELINE_CACHE_DIR", str(out / "cache"))  # a fresh cache: calibration is timed
    full = load_dataset("fashion-mnist", a.data_dir)
    rows_of = subset_rows(full, a.train, a.test)
    ds = subset(full, rows_of)
    bf16 = cpu_has_bf16()
    print(f"CPU: {cpu_label()}; Fashion-MNIST "
          f"{len(ds.splits['train']):,} train / {len(ds.splits['test']):,} test images (stratified, seed 0); "
          f"OpenVINO engine, batch 64", flush=True)
    keep = a.configs.split(",") if a.configs else None
    rows = []
    if keep is None or "raw" in keep:
        raw = load_feature_set("raw", "fashion-mnist", a.data_dir)
        tr, te = rows_of["train"], rows_of["test"]
        raw = replace(raw, X_train=raw.X_train[tr], y_train=raw.y_train[tr], X_test=raw.X_test[te],
                      y_test=raw.y_test[te])
        rows.append({"config": "raw pixels", "precision": "-", "img_per_s": None, **scores(raw, out / "raw")})
        print(rows[-1], flush=True)
    for label, backbone, weights, size in CONFIGS:
        if keep and label.split()[0] not in keep:
            continue
        precs = a.precisions.split(",") + (["bf16"] if bf16 and label in NATIVE else [])
        for prec in precs:
            store = out / "stores" / f"{label.replace(' ', '_')}-{prec}"
            t = time.perf_counter()
            extract(ExtractRequest(backbone=backbone, weights=weights, image_size=size, precision=prec,
                                   engine="openvino", out=store), dataset=ds, log=lambda m: None, progress=False)
            wall = time.perf_counter() - t
            meta = json.loads((store / "meta.json").read_text())
            fs = load_feature_set(str(store))
            row = {"config": label, "precision": meta["precision"], "asked": prec,
                   "img_per_s": meta["throughput"]["img_per_s"],
                   "setup_s": round(wall - meta["throughput"]["seconds"], 1) if meta["throughput"]["images"] else None,
                   **scores(fs, out / "scores" / store.name)}
            rows.append(row)
            print(row, flush=True)
    (out / "sweep.json").write_text(json.dumps({"cpu": cpu_label(), "train": a.train, "test": a.test,
                                                "rows": rows}, indent=1))
    table(rows)
    if a.figure:
        figure(rows, Path(a.figure), f"{cpu_label()}; Fashion-MNIST {a.train:,} / {a.test:,}")


def table(rows):
    ref = next((r for r in rows if r["config"] == "Lite0 224 px" and r["asked"] == "fp32"), None)
    print("\n| features | precision | extraction img/s | × Lite0 224 fp32 | logistic regression | MLP head |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['img_per_s']:.0f}" if r["img_per_s"] else "–"
        ratio = f"{r['img_per_s'] / ref['img_per_s']:.2f}×" if ref and r["img_per_s"] else "–"
        print(f"| {r['config']} | {r['precision']} | {speed} | {ratio} | {r['logreg']:.4f} | {r['mlp']:.4f} |")


def figure(rows, path: Path, title: str):
    """Accuracy against img/s: Lite0's sizes as one line per precision, the other backbones as labelled points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    marks = {"fp32": "o", "bf16": "s", "int8": "^"}
    for ax, key, name in ((axes[0], "logreg", "logistic regression (quick grid)"), (axes[1], "mlp", "MLP head")):
        for prec, colour in (("fp32", "C0"), ("int8", "C1")):
            line = sorted((r for r in rows if r["config"].startswith("Lite0") and r["precision"] == prec),
                          key=lambda r: r["img_per_s"])
            ax.plot([r["img_per_s"] for r in line], [r[key] for r in line], marker=marks[prec], color=colour,
                    label=f"Lite0 {prec}, 224 → 96 px")
            for r in line:
                ax.annotate(r["config"].split()[1], (r["img_per_s"], r[key]), fontsize=7, color=colour,
                            xytext=(3, 3), textcoords="offset points")
        for r in rows:
            if r["img_per_s"] is None:
                ax.axhline(r[key], color="grey", ls="--", lw=0.8)
                ax.annotate("raw pixels", (0.01, r[key]), xycoords=("axes fraction", "data"), fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
            elif not (r["config"].startswith("Lite0") and r["precision"] in ("fp32", "int8")):
                colour = "C2" if r["config"].startswith("ResNet") else "C3" if r["config"].startswith("Lite0") else "C4"
                ax.scatter(r["img_per_s"], r[key], marker=marks.get(r["precision"], "x"), color=colour)
                ax.annotate(f"{r['config']} {r['precision']}", (r["img_per_s"], r[key]), fontsize=6.5,
                            color=colour, xytext=(3, 3 if r["precision"] == "bf16" else -9), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("extraction speed, img/s (log scale; further right is cheaper)")
        ax.set_ylabel(f"test accuracy, {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Accuracy against extraction cost (OpenVINO; o fp32, s bf16, ^ int8): {title}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    print(f"figure: {path}")


def redraw(results: Path, figure_path: Path | None):
    """The table (and the figure) again from a finished run's sweep.json, without extracting anything."""
    run = json.loads(results.read_text())
    table(run["rows"])
    if figure_path:
        figure(run["rows"], figure_path, f"{run['cpu']}; Fashion-MNIST {run['train']:,} / {run['test']:,}")


if __name__ == "__main__":
    main()
