"""`pipeline finetune`: train a network on the images themselves, the other half of "frozen features or
fine-tuning?". A new linear head on the backbone, with the last N blocks trainable:

- `--unfreeze 0`: the backbone frozen, only the head trained (on augmented images: what a head on stored
  features cannot see);
- `--unfreeze N`: the last N blocks trained too (EfficientNet-Lite0: 9 blocks, the stem, 7 MBConv stages and
  the 1x1 head convolution, as torchvision lays out EfficientNets; ResNets: stem, layer1..layer4);
- `--unfreeze all --weights none`: the from-scratch baseline.

Batches go up as uint8 and are resized, augmented (random resized crop / shift, flip, small rotation: one
affine `grid_sample` per batch) and normalised on the compute device; the forward runs in bf16 autocast where
the hardware has it, channels_last. Frozen blocks stay in eval mode (their batch-norm statistics are the
pretrained ones) and run without gradients; with no augmentation their output is computed once and cached.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.console import progress_bar, stderr
from pipeline.data import load_dataset
from pipeline.data.folder import refuse_output_inside
from pipeline.embed.backbones import GlobalPool, Preprocess, build_backbone
from pipeline.embed.request import LITE, native_size
from pipeline.errors import PipelineError
from pipeline.files import folder_lock
from pipeline.hardware import device_name, resolve_device
from pipeline.results import check_results_file, make_record, record_stem, study_out
from pipeline.store.featuresets import labels_sha256
from pipeline.train.config import FINETUNE_HEAD_LR, FINETUNE_LR, FinetuneRequest
from pipeline.train.heads import finish
from pipeline.train.loop import (
    Outcome,
    Task,
    autocast,
    checkpoint_path,
    shuffled_batches,
    stratified_split,
    train,
    training_precision,
)

# --- the network as blocks ---------------------------------------------------------------------------

class _MBConvStage(nn.Module):
    """EfficientNet MBConv blocks run in sequence with their stochastic-depth rates (as the model's own
    forward gives them)."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]):
        super().__init__()
        self.blocks, self.rates = nn.ModuleList(blocks), rates

    def forward(self, x):
        for b, r in zip(self.blocks, self.rates):
            x = b(x, drop_connect_rate=r)
        return x


def split_blocks(name: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone as a sequence of named blocks whose composition (then global pooling) gives its features."""
    if name in LITE:
        m = model
        stem = nn.Sequential(m._conv_stem, m._bn0, m._swish)
        blocks = list(m._blocks)
        dcr = m._global_params.drop_connect_rate or 0.0
        rates = [dcr * i / len(blocks) for i in range(len(blocks))]
        stages, cur, cur_r = [], [], []
        for b, r in zip(blocks, rates):
            a = b._block_args
            if cur and a.input_filters != a.output_filters:  # the first block of each stage changes width
                stages.append(_MBConvStage(cur, cur_r))
                cur, cur_r = [], []
            cur.append(b)
            cur_r.append(r)
        stages.append(_MBConvStage(cur, cur_r))
        head = nn.Sequential(m._conv_head, m._bn1, m._swish)
        return [("stem", stem)] + [(f"stage{i + 1}", s) for i, s in enumerate(stages)] + [("head_conv", head)]
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4")):  # torchvision ResNets
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    return [("backbone", model)]  # any other model: one block (frozen, or trained whole)


class FinetuneNet(nn.Module):
    """blocks -> global average pool -> dropout -> Linear(classes). `frozen` blocks (the first ones) run in
    eval mode without gradients; `start` skips blocks whose output was cached."""

    def __init__(self, blocks: list[tuple[str, nn.Module]], dim: int, n_classes: int, frozen: int,
                 dropout: float):
        super().__init__()
        self.names = [n for n, _ in blocks]
        self.blocks = nn.ModuleList([b for _, b in blocks])
        self.pool = GlobalPool()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)
        self.frozen = frozen
        for b in self.blocks[:frozen]:
            b.requires_grad_(False)

    def trunk(self, x, start: int = 0):
        """The frozen blocks' output (no gradients); pooled when every block is frozen."""
        with torch.no_grad():
            for b in self.blocks[start:self.frozen]:
                x = b(x)
        return self.pool(x) if self.frozen == len(self.blocks) else x

    def forward(self, x, start: int = 0):
        if start < self.frozen:
            x = self.trunk(x, start)
        for b in self.blocks[max(start, self.frozen):]:
            x = b(x)
        return self.head(self.dropout(self.pool(x)))

    def train_mode(self):
        """Trainable blocks and the head in train mode; frozen blocks keep their pretrained BN statistics."""
        self.train()
        for b in self.blocks[:self.frozen]:
            b.eval()


# --- augmentation on the device ----------------------------------------------------------------------

def augment_batch(x: torch.Tensor, augments: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """float (B, C, S, S) -> the same shape, each image with its own random resized crop (scale 0.75-1 of
    the side, shifted up to the margin it leaves, plus up to 8 % shift), horizontal flip (p 0.5) and rotation
    (+-10 degrees): one affine grid per image, one bilinear `grid_sample` for the batch."""
    if not augments:
        return x
    b = x.shape[0]
    dev = x.device

    def u(lo, hi):
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    scale = u(0.75, 1.0) if "crop" in augments else torch.ones(b, device=dev)
    shift = (1 - scale) + (0.08 if "crop" in augments else 0.0)
    tx, ty = (u(-1, 1) * shift, u(-1, 1) * shift) if "crop" in augments else (torch.zeros(b, device=dev),) * 2
    angle = u(-10, 10) * math.pi / 180 if "rotate" in augments else torch.zeros(b, device=dev)
    flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if "flip" in augments else torch.ones(b, device=dev)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --- images in memory --------------------------------------------------------------------------------

def _images_in_memory(split, size: int, log) -> torch.Tensor:
    """A split's images as one uint8 (N, C, h, w) tensor: an array dataset as it is; an image folder decoded
    once and resized to `size` (memory: N x 3 x size^2 bytes)."""
    if split.images is not None:
        return torch.from_numpy(np.ascontiguousarray(split.images))
    pre = Preprocess(size, (0, 0, 0), (1, 1, 1))
    out = torch.empty((len(split), 3, size, size), dtype=torch.uint8)
    for a in range(0, len(split), 256):
        for i, img in enumerate(split.batch(a, min(a + 256, len(split)))):
            x = pre.resize(torch.from_numpy(img)[None]).round().clamp(0, 255).to(torch.uint8)
            out[a + i] = x.expand(-1, 3, -1, -1)[0]
    log(f"{split.name}: {len(split):,} images decoded and resized to {size} px in memory "
        f"({out.numel() / 2**20:.0f} MiB)")
    return out


# --- the stage ---------------------------------------------------------------------------------------

def mode_name(backbone: str, weights: str, unfreeze: int, n_blocks: int, image_size: int,
              augmented: bool = True) -> str:
    """The record's feature-set name: backbone and mode, e.g. 'efficientnet_lite0 fine-tuned (last 2 blocks)'."""
    size = [f"{image_size} px"] if image_size != native_size(backbone) else []
    if weights == "none" and unfreeze == n_blocks:
        return f"{backbone} from scratch" + (f" ({size[0]})" if size else "")
    init = "random-init " if weights == "none" else ""
    if unfreeze == 0:
        what, detail = f"{init}frozen + head", ["augmented" if augmented else "no augmentation"]
    else:
        what = f"{init}fine-tuned"
        detail = ["all blocks" if unfreeze == n_blocks else f"last {unfreeze} block{'s' * (unfreeze > 1)}"]
    return f"{backbone} {what} ({', '.join(detail + size)})"


def finetune(req: FinetuneRequest, progress: bool | None = None, log: Callable[[str], None] = stderr) -> dict:
    """Fine-tune and write the record (classifier `finetune`) into `req.out`/results.json, with the learning
    curve and the model (safetensors + card)."""
    req.train.check()
    augments = req.augments()
    out = study_out(req.out, req.dataset, req.data_dir, limit=req.limit)
    if req.dataset == "folder":
        refuse_output_inside(out, req.data_dir)
    with folder_lock(out, "pipeline finetune"):
        return _finetune_locked(req, augments, out, progress, log)


def _finetune_locked(req: FinetuneRequest, augments: tuple[str, ...], out: Path, progress, log) -> dict:
    """The stage, in `out` locked: data, network, inputs, training, then the record and the model written."""
    started = time.perf_counter()
    cfg = req.train
    device = resolve_device(cfg.device)
    precision = training_precision(cfg.precision, device)
    ds = _load_train_and_test(req)
    y_train, y_test = ds.splits["train"].labels, ds.splits["test"].labels
    digest = labels_sha256(y_train, y_test)
    check_results_file(out, digest)
    tr, va = stratified_split(y_train, cfg.val_fraction, ds.classes, cfg.seed)
    nw = _build_network(req, len(ds.classes), device, precision, log)
    name = mode_name(req.backbone, req.weights, nw.unfreeze, len(nw.net.names), req.size, augmented=bool(augments))
    _say_network(name, nw.net, device, precision, nw.channels_last, augments, log)
    feed = _ImageFeed(nw.net, nw.pre, device, precision, nw.channels_last, augments,
                      images={"train": _images_in_memory(ds.splits["train"], req.size, log),
                              "test": _images_in_memory(ds.splits["test"], req.size, log)},
                      y_train=torch.as_tensor(y_train, dtype=torch.long, device=device), tr=tr, va=va,
                      batch_size=min(cfg.batch_size, len(tr)), seed=cfg.seed)
    if not augments and nw.net.frozen > 0:  # the frozen blocks' output never changes: compute it once
        feed.cache_frozen_output(cfg.batch_size, progress, log)
    lr = _learning_rate(cfg.lr, nw.unfreeze, req.weights)
    task = _finetune_task(req, ds.content_hash, name, nw, feed, np.asarray(y_train), np.asarray(y_test), precision)
    ckpt = checkpoint_path(out, record_stem(name, "finetune"))
    result = train(task, cfg, lr, ckpt, device, precision, req.overwrite, progress, started, log)
    rec = _finetune_record(req, ds, digest, name, nw, feed, lr, result, precision)
    _save_outputs(out, rec, req, ds, nw, ckpt)
    log(f"{name}: test {rec['test_accuracy']:.4f}  val {rec['cv_mean']:.4f}  best epoch {rec['best_epoch']} of "
        f"{rec['epochs_run']} ({rec['stopped_by']})  {rec['fit_seconds'] / 60:.1f} min on {rec['device_name']}, "
        f"{precision}")
    return rec


def _load_train_and_test(req: FinetuneRequest):
    """The request's dataset; refused unless it has both a train and a test split."""
    ds = load_dataset(req.dataset, req.data_dir, req.limit,
                      test_fraction=req.test_fraction if req.dataset == "folder" else None)
    for s in ("train", "test"):
        if s not in ds.splits:
            raise PipelineError(f"fine-tuning needs train and test images; {ds.source} has "
                                f"{', '.join(ds.splits)} only")
    return ds


def _unfrozen_blocks(req: FinetuneRequest, blocks: list[tuple[str, nn.Module]]) -> int:
    """--unfreeze as a number of trainable blocks: "all", or 0..N; one line naming the blocks otherwise."""
    n = len(blocks)
    if req.unfreeze == "all":
        return n
    try:
        k = int(req.unfreeze)
    except ValueError:
        k = -1
    if not 0 <= k <= n:
        raise PipelineError(f"--unfreeze {req.unfreeze}: {req.backbone} has {n} blocks "
                            f"({', '.join(nm for nm, _ in blocks)}); use 0..{n} or all")
    return k


@dataclass
class _Network:
    """The network to train, on its device, with the backbone it came from and its input preprocessing."""
    backbone: Any  # build_backbone's: .dim, .weights, .describe_preprocessing()
    net: FinetuneNet
    pre: Preprocess
    unfreeze: int  # trainable blocks, counted from the last
    channels_last: bool


def _build_network(req: FinetuneRequest, n_classes: int, device: torch.device, precision: str, log) -> _Network:
    """The backbone as blocks, the last `--unfreeze` of them trainable, with a new (seeded) head; on the
    device, channels_last where bf16 or CUDA runs it."""
    bb = build_backbone(req.backbone, req.weights, image_size=req.size)
    blocks = split_blocks(req.backbone, bb.model)
    n = len(blocks)
    k = _unfrozen_blocks(req, blocks)
    if req.weights == "none" and k < n:
        log(f"note: --weights none with --unfreeze {k}: the frozen blocks keep random weights")
    torch.manual_seed(req.train.seed)
    net = FinetuneNet(blocks, bb.dim, n_classes, frozen=n - k, dropout=req.head_dropout)
    pre = bb.preprocess()
    net, pre = net.to(device), pre.to(device)
    channels_last = precision == "bf16" or device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return _Network(bb, net, pre, k, channels_last)


def _say_network(name: str, net: FinetuneNet, device: torch.device, precision: str, channels_last: bool,
                 augments: tuple[str, ...], log) -> None:
    """One line: what trains (parameters, blocks), where, in what precision, with which augmentation."""
    log(f"{name}: {sum(p.numel() for p in net.parameters() if p.requires_grad):,} trainable parameters "
        f"({', '.join(net.names[net.frozen:]) or 'none'} + head); {device_name(device)}, {precision}"
        f"{', channels_last' if channels_last else ''}; augmentation: {', '.join(augments) or 'none'}")


@dataclass
class _ImageFeed:
    """The images on their way into the network: prepared on the device (resized, augmented, normalised), or
    the frozen blocks' output cached once; the training batches and the predictions for validation and test."""
    net: FinetuneNet
    pre: Preprocess
    device: torch.device
    precision: str
    channels_last: bool
    augments: tuple[str, ...]
    images: dict[str, torch.Tensor]  # "train", "test": uint8 (N, C, h, w)
    y_train: torch.Tensor  # on the device
    tr: np.ndarray  # training rows
    va: np.ndarray  # validation rows (of the train split)
    batch_size: int
    seed: int
    cache: dict[str, torch.Tensor] | None = None  # the frozen blocks' output, "train" and "test"
    start: int = 0  # the first block the network runs (past the cached ones)
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def cache_frozen_output(self, batch_size: int, progress, log) -> None:
        """From now on, train and predict on the frozen blocks' output, computed once."""
        self.cache = _cache_frozen_output(self.net, self.images, self.prepared, self.device, self.precision,
                                          batch_size, progress, log)
        self.start = self.net.frozen

    def prepared(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images -> the network's input on the device: resized, augmented (with `gen`), normalised."""
        x = x.to(self.device, non_blocking=True)
        x = self.pre.resize(x)
        if gen is not None:
            x = augment_batch(x, self.augments, gen)
        x = self.pre.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def steps_per_epoch(self) -> int:
        return len(shuffled_batches(len(self.tr), self.batch_size, self.seed, 1))

    def batches(self, epoch: int):
        """One epoch of shuffled (inputs, targets) training batches on the device."""
        self.generator.manual_seed(self.seed * 100003 + epoch)  # a resumed epoch sees the same augmentations
        for idx in shuffled_batches(len(self.tr), self.batch_size, self.seed, epoch):
            rows = torch.as_tensor(self.tr[idx])
            targets = self.y_train[rows.to(self.device)]
            if self.cache is not None:
                yield self.cache["train"][rows.to(self.cache["train"].device)].to(self.device).float(), targets
            else:
                yield self.prepared(self.images["train"][rows], self.generator if self.augments else None), targets

    @torch.no_grad()
    def predict(self, split: str) -> torch.Tensor:
        """Logits (eval mode) for "val" (the held-out training rows) or "test"."""
        self.net.eval()
        src, rows = ("train", torch.as_tensor(self.va)) if split == "val" else ("test", None)
        count = len(rows) if rows is not None else len(self.images["test"])
        step = max(self.batch_size, 256)
        outs = []
        for a in range(0, count, step):
            sel = rows[a:a + step] if rows is not None else slice(a, a + step)
            with autocast(self.device, self.precision):
                if self.cache is not None:
                    outs.append(self.net(self.cache[src][sel].to(self.device).float(), self.start).float())
                else:
                    outs.append(self.net(self.prepared(self.images[src][sel])).float())
        return torch.cat(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training logits for a batch `batches` gave (past the cached blocks, if any)."""
        return self.net(x, self.start)


def _learning_rate(lr: float | str, unfreeze: int, weights: str) -> float:
    """--lr, or for "auto": the head's rate when only the head trains or the network starts from random
    weights, else the fine-tuning rate."""
    auto_lr = FINETUNE_HEAD_LR if unfreeze == 0 or weights == "none" else FINETUNE_LR
    return auto_lr if lr == "auto" else float(lr)


def _finetune_task(req: FinetuneRequest, dataset_hash: str, name: str, nw: _Network, feed: _ImageFeed,
                   y_train: np.ndarray, y_test: np.ndarray, precision: str) -> Task:
    """What the loop trains: the network's trainable parameters on the feed's batches; its settings (what a
    checkpoint must match)."""
    net = nw.net
    return Task(name=name, model=net, params=[p for p in net.parameters() if p.requires_grad], batches=feed.batches,
                steps_per_epoch=feed.steps_per_epoch(), forward=feed.forward, predict=feed.predict,
                y_val=y_train[feed.va], y_test=y_test, images_per_epoch=len(feed.tr), train_mode=net.train_mode,
                settings={"dataset": dataset_hash, "backbone": req.backbone,
                          "weights": nw.backbone.weights.get("sha256") or nw.backbone.weights.get("id"),
                          "unfreeze": nw.unfreeze, "augment": list(feed.augments), "image_size": req.size,
                          "head_dropout": req.head_dropout, "device": feed.device.type, "precision": precision})


def _transfer_mode(weights: str, unfreeze: int, n_blocks: int) -> tuple[str, str]:
    """(label, mode) of the record: From scratch / scratch, Fine-tuned / finetune-K, Frozen + head / frozen+head."""
    label = "From scratch" if weights == "none" else "Fine-tuned" if unfreeze else "Frozen + head"
    mode = ("scratch" if weights == "none" and unfreeze == n_blocks else "frozen+head" if unfreeze == 0
            else f"finetune-{unfreeze}")
    return label, mode


def _finetune_record(req: FinetuneRequest, ds, digest: str, name: str, nw: _Network, feed: _ImageFeed, lr: float,
                     result: Outcome, precision: str) -> dict:
    """The results.json record of the run."""
    cfg, net, k = req.train, nw.net, nw.unfreeze
    y_train, y_test = ds.splits["train"].labels, ds.splits["test"].labels
    label, mode = _transfer_mode(req.weights, k, len(net.names))
    return make_record(
        name, "finetune", label, y_test=y_test, pred=result.test_logits.argmax(1).numpy(), classes=ds.classes,
        labels_sha256=digest, n_train=len(y_train),
        best_params={"unfreeze": k, "lr": lr, "lr_schedule": cfg.lr_schedule, "batch_size": feed.batch_size,
                     "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
                     "augment": ",".join(feed.augments) or "none", "image_size": req.size},
        cv_mean=result.val_accuracy, cv_std=0.0, cv_folds=1, tune_rows=len(feed.tr), candidates=1,
        fit_seconds=result.seconds, backend="torch", device=str(feed.device), mode=mode,
        backbone=req.backbone, weights=nw.backbone.weights, unfreeze=k, blocks=net.names,
        trainable_blocks=net.names[net.frozen:], augment=list(feed.augments) or None, image_size=req.size,
        cached_trunk=feed.cache is not None,
        trainable_parameters=int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        validation=f"stratified holdout: {cfg.val_fraction:.0%} of the training split ({len(feed.va):,} rows)",
        precision=precision, channels_last=nw.channels_last, dataset=req.dataset,
        dataset_content_sha256=ds.content_hash, best_epoch=result.best_epoch, epochs_run=result.epochs_run,
        epochs=cfg.epochs, stopped_by=result.stopped_by, history=result.history,
        train_img_per_s=result.throughput, resumed_at_epoch=result.resumed_at, max_minutes=cfg.max_minutes,
        request=req.key())


def _save_outputs(out: Path, rec: dict, req: FinetuneRequest, ds, nw: _Network, ckpt: Path) -> None:
    """The model (with its architecture and classes on the card), the record and the learning curve; then
    the checkpoint goes."""
    bb, net = nw.backbone, nw.net
    arch = {"kind": "finetune", "backbone": req.backbone, "weights": bb.weights, "image_size": req.size,
            "blocks": net.names, "unfreeze": nw.unfreeze, "head_dropout": req.head_dropout, "feature_dim": bb.dim,
            "preprocessing": bb.describe_preprocessing()}
    about = {"classes": list(ds.classes), "dataset": req.dataset, "dataset_source": ds.source, "features": None}
    finish(out, rec, net, arch, about, ckpt)


def _cache_frozen_output(net: FinetuneNet, images, prepared, device, precision, batch_size, progress, log) -> dict:
    """The frozen blocks' output for every image, once (float16: half the memory; kept on the device when it
    fits in a quarter of its free memory, else in host memory)."""
    net.eval()
    t = time.perf_counter()
    out = {}
    bs = max(batch_size, 128)
    total = sum(len(v) for v in images.values())
    with progress_bar(total, progress=progress, unit="img", desc="caching the frozen blocks' output",
                      leave=False) as bar:
        for split, imgs in images.items():
            parts = []
            for a in range(0, len(imgs), bs):
                with torch.no_grad(), autocast(device, precision):
                    parts.append(net.trunk(prepared(imgs[a:a + bs])).to(torch.float16).cpu())
                bar.update(len(parts[-1]))
            out[split] = torch.cat(parts).contiguous()
    size = sum(v.numel() * 2 for v in out.values())
    if device.type == "cuda" and size < torch.cuda.mem_get_info(device)[0] / 4:
        out = {k: v.to(device) for k, v in out.items()}
    log(f"cached the frozen blocks' output for {total:,} images: {tuple(out['train'].shape[1:])} per image, "
        f"{size / 2**20:.0f} MiB float16, in {time.perf_counter() - t:.0f} s")
    return out
