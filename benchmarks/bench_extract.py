"""Stage 1 speed, side by side in one run: the naive tutorial loop, each model-only engine, and the whole
`pipeline extract` command, in img/s at 224 (batch 64) with peak RSS, for ResNet-18 and EfficientNet-Lite0.

    python benchmarks/bench_extract.py [--data-dir DIR] [--images N] [--models resnet18,efficientnet_lite0]

Speed does not depend on the weights' values, so ResNet-18 runs with random weights (no ImageNet file here).
Ratios are what to read: absolute figures move +-15% with machine noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.data import load_dataset  # noqa: E402
from pipeline.embed.backbones import build_backbone  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402

BATCH, SIZE = 64, 224


def rate(fn, batches, warmup=1):
    for b in batches[:warmup]:
        fn(b)
    t = time.perf_counter()
    n = 0
    for b in batches[warmup:]:
        fn(b)
        n += len(b)
    return n / (time.perf_counter() - t)


def naive_loop(name, images, weights):
    """The tutorial way: torchvision fp32 NCHW, per-image PIL transforms, stacked into batches."""
    from PIL import Image
    from torchvision import transforms

    bb = build_backbone(name, weights, image_size=SIZE)
    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.Grayscale(3), transforms.ToTensor(),
                             transforms.Normalize(bb.mean, bb.std)])
    model = bb.model.eval()

    def step(batch):
        with torch.no_grad():
            x = torch.stack([tf(Image.fromarray(im[0])) for im in batch])
            return model(x).numpy()

    return rate(step, [images[i:i + BATCH] for i in range(0, len(images), BATCH)])


def model_only(name, weights, n_images):
    """The model alone on a ready, normalised batch: each engine and precision."""
    bb = build_backbone(name, weights, image_size=SIZE)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    batches = [x] * (1 + max(2, n_images // BATCH))
    results = {}
    for label, prec, cl in (("torch fp32 NCHW", "fp32", False), ("torch fp32 channels_last", "fp32", True),
                            ("torch bf16 channels_last", "bf16", True)):
        model = bb.model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)

        def fwd(b, model=model, prec=prec, cl=cl):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=prec == "bf16"):
                return model(b.contiguous(memory_format=torch.channels_last) if cl else b)

        results[label] = rate(fwd, batches)
    from pipeline.embed.engines import _import_openvino, _no_telemetry

    ov = _import_openvino()  # usage telemetry declined
    with _no_telemetry():
        graph = ov.convert_model(bb.model, example_input=x[:1], input=[(-1, 3, SIZE, SIZE)])
    halves = [h.numpy() for h in x.split(BATCH // 2)]
    for hint in ("f32", "bf16"):
        compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "THROUGHPUT"})
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what runs, not what was asked
        queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

        def ov_batch(_, queue=queue):  # a ready batch, as two async requests of 32 (the engine's request size)
            for h in halves:
                queue.start_async({0: h}, share_inputs=True)
            queue.wait_all()

        label = f"openvino {hint} (async)" if ran == hint else f"openvino {hint} asked, {ran} ran (async)"
        results[label] = rate(ov_batch, batches)
    return results


def whole_command(name, weights, data_dir, limit):
    """`pipeline extract` as a user runs it (its own process): in-loop img/s, wall img/s, peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, "-m", "pipeline.cli", "extract",
               "--data-dir", data_dir, "--backbone", name, "--weights", weights, "--limit", str(limit),
               "--out", f"{tmp}/store", "--batch-size", str(BATCH)]
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"extract failed: {p.stderr}")
        # /usr/bin/time, not wait4: a forked child inherits this (large) process's RSS high-water mark
        rss_kb = int(p.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0])
        meta = json.loads(Path(f"{tmp}/store/meta.json").read_text())
    n = meta["throughput"]["images"]
    return {"img_per_s": meta["throughput"]["img_per_s"], "wall_img_per_s": n / wall, "wall_s": wall,
            "images": n, "peak_rss_mb": rss_kb / 1024, "engine": meta["engine"]["engine"],
            "precision": meta["precision"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/FashionMNIST/raw"))
    ap.add_argument("--images", type=int, default=1024, help="images per model-only measurement")
    ap.add_argument("--naive-images", type=int, default=320)
    ap.add_argument("--extract-limit", type=int, default=1500, help="--limit for the whole command (x2 splits)")
    ap.add_argument("--models", default="resnet18,efficientnet_lite0")
    a = ap.parse_args()
    ds = load_dataset("fashion-mnist", a.data_dir, limit=a.naive_images + BATCH)
    images = ds.splits["train"].batch(0, a.naive_images + BATCH)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads;"
          f" batch {BATCH}, {SIZE}x{SIZE}, Fashion-MNIST", flush=True)
    rows = []
    for name in a.models.split(","):
        weights = "imagenet" if name == "efficientnet_lite0" else "none"
        naive = naive_loop(name, images, weights)
        print(f"{name}: naive {naive:.1f} img/s", flush=True)
        engines = model_only(name, weights, a.images)
        for k, v in engines.items():
            print(f"{name}: model-only {k} {v:.1f} img/s", flush=True)
        whole = whole_command(name, weights, a.data_dir, a.extract_limit)
        print(f"{name}: whole extract {whole}", flush=True)
        best = max(engines, key=engines.get)
        rows.append((name, naive, engines, best, whole))
    print("\n| backbone | naive loop | " + " | ".join(rows[0][2]) + " | whole `extract` (in-loop / wall) "
          "| extract ÷ best engine | extract ÷ naive | peak RSS |")
    print("|---" * (7 + len(rows[0][2])) + "|")
    for name, naive, engines, best, whole in rows:
        eng = " | ".join(f"{v:.0f}" for v in engines.values())
        print(f"| {name} | {naive:.0f} | {eng} | {whole['img_per_s']:.0f} / {whole['wall_img_per_s']:.0f} "
              f"({whole['engine']} {whole['precision']}) | {whole['img_per_s'] / engines[best]:.2f}× "
              f"(vs {best}) | {whole['img_per_s'] / naive:.1f}× | {whole['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
