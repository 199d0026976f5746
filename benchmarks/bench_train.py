"""Training throughput of `pipeline finetune`'s own path, per mode and precision, side by side in one run:
EfficientNet-Lite0 with a new 10-class head, uint8 batches resized, augmented (crop, flip, rotate) and
normalised on the device, then forward + backward + AdamW step.

Modes: frozen trunk (head only: the trunk runs without gradients), last block (the 1x1 head convolution),
last 2 blocks (+ stage 7), all blocks. Precisions: fp32 and bf16 autocast (channels_last for bf16, and for
everything on CUDA). img/s is the median of timed steps after warm-up steps.

    python benchmarks/bench_train.py [--device cpu|cuda] [--image-size 224] [--batch-size 64] [--steps 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _step(net, pre, opt, x8, y, gen, device, prec, channels_last) -> None:
    """One training step as `pipeline finetune` takes it: upload, resize, augment, normalise, forward, step."""
    import torch
    import torch.nn.functional as F

    from pipeline.train.finetune import augment_batch
    from pipeline.train.loop import autocast

    x = augment_batch(pre.resize(x8.to(device)), ("crop", "flip", "rotate"), gen)
    x = pre.normalize(x)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with autocast(device, prec):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    import numpy as np
    import torch

    from pipeline.embed.backbones import build_backbone
    from pipeline.hardware import cpu_has_bf16, cpu_name, device_name, resolve_device
    from pipeline.train.config import FinetuneRequest
    from pipeline.train.finetune import FinetuneNet, split_blocks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 64 on the CPU, 256 on CUDA]")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per cell (after 2 warm-up steps)")
    ap.add_argument("--modes", default="0,1,2,all")
    args = ap.parse_args()
    device = resolve_device(args.device)
    bs = args.batch_size or (256 if device.type == "cuda" else 64)
    S = args.image_size
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (bs, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (bs,), device=device)
    hw = device_name(device) + (f" ({os.cpu_count()} cores)" if device.type == "cpu" else f"; host {cpu_name()}")
    native = "yes" if (device.type == "cuda" or cpu_has_bf16()) else "no (emulated: no AVX-512-bf16 / AMX)"
    print(f"# {hw}; torch {torch.__version__}; EfficientNet-Lite0 at {S} px, batch {bs}; native bf16: {native}")
    print(f"{'mode':<16}{'trainable':>12}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16/fp32':>11}")
    gen = torch.Generator().manual_seed(0)
    for mode in args.modes.split(","):
        rates = {}
        for prec in ("fp32", "bf16"):
            bb = build_backbone("efficientnet_lite0", "imagenet", image_size=S)
            blocks = split_blocks("efficientnet_lite0", bb.model)
            k = len(blocks) if mode == "all" else int(mode)
            net = FinetuneNet(blocks, bb.dim, 10, frozen=len(blocks) - k,
                              dropout=FinetuneRequest.head_dropout).to(device)
            pre = bb.preprocess().to(device)
            cl = prec == "bf16" or device.type == "cuda"
            if cl:
                net = net.to(memory_format=torch.channels_last)
            params = [p for p in net.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3)
            net.train_mode()

            times = []
            for i in range(2 + args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                _step(net, pre, opt, x8, y, gen, device, prec, cl)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t)
            rates[prec] = bs / float(np.median(times))
            n_train = sum(p.numel() for p in params)
        label = {"0": "frozen trunk", "1": "last block", "all": "all blocks"}.get(mode, f"last {mode} blocks")
        ratio = rates["bf16"] / rates["fp32"]
        print(f"{label:<16}{n_train:>12,}{rates['fp32']:>12.0f}{rates['bf16']:>12.0f}{ratio:>10.2f}x", flush=True)


if __name__ == "__main__":
    main()
