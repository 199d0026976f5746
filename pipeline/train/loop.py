"""The training loop shared by `pipeline train` (a head on stored features) and `pipeline finetune` (a
network on images): AdamW, a named LR schedule stepped per batch, early stopping on a stratified validation
split of the training data (never the test split), the best epoch restored, a checkpoint written atomically
after every epoch and resumed by a rerun of the same command, a progress bar per epoch, a time budget.

What is trained and on which batches is the caller's business (`Task`); this module knows nothing of
features, images or backbones.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.data import stratified_holdout
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.files import config_hash, replacing
from pipeline.hardware import auto_precision
from pipeline.train.config import TRAIN_PRECISIONS, TrainConfig

CHECKPOINTS_DIR = "checkpoints"


def stratified_split(y: np.ndarray, fraction: float, classes: list[str], seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `fraction` of each class held out for validation (seeded). Refuses a
    split that leaves a class without rows on either side."""
    def refuse(c: int, n: int, k: int) -> None:
        raise PipelineError(f"--val-fraction {fraction} leaves class {classes[c]!r} ({n} training images) with no "
                            f"{'validation' if k < 1 else 'training'} images; {'raise' if k < 1 else 'lower'} "
                            f"--val-fraction or use more images")

    return stratified_holdout(y, fraction, seed, refuse=refuse)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision training runs in: bf16 autocast where the hardware has it, else fp32 (no fp16 here:
    it needs a loss scaler, and bf16 does not)."""
    if precision not in TRAIN_PRECISIONS:
        raise PipelineError(f"--precision {precision!r}: training takes {', '.join(TRAIN_PRECISIONS)}")
    return auto_precision(device, half=False) if precision == "auto" else precision


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class Task:
    """What to train. `batches(epoch)` yields (inputs, targets) for one epoch of training (shuffled,
    augmented, on the device); `predict(split)` gives logits for "val" or "test" (eval mode, no grad);
    `steps_per_epoch` is the number of batches `batches` yields."""
    name: str  # e.g. "efficientnet_lite0 mlp", shown in the progress bar
    model: nn.Module  # holds every parameter the optimizer sees; its state dict is what is checkpointed
    params: list  # the trainable parameters
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    steps_per_epoch: int
    forward: Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits (train mode)
    predict: Callable[[str], torch.Tensor]
    y_val: np.ndarray
    y_test: np.ndarray
    images_per_epoch: int
    settings: dict = field(default_factory=dict)  # what must match for a checkpoint to be resumed
    train_mode: Callable[[], None] | None = None  # put the trainable parts in train mode (frozen BN stays eval)


@dataclass
class Outcome:
    history: list[dict]
    best_epoch: int
    epochs_run: int
    stopped_by: str  # "patience", "epochs", "budget"
    seconds: float  # training wall time, resumed runs summed
    val_accuracy: float
    test_logits: torch.Tensor
    resumed_at: int | None  # the first epoch trained after resuming a checkpoint; None if none was
    throughput: float  # training images per second, measured


def checkpoint_path(out: Path, stem: str) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"{stem}.pt"


def _optimizer(task: Task, cfg: TrainConfig, lr: float, total_steps: int):
    opt = torch.optim.AdamW(task.params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "onecycle":
        # a one-cycle schedule of under ~8 steps divides by zero inside torch: tiny runs get a longer one
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps + 1, 8),
                                                    pct_start=0.25)
    elif cfg.lr_schedule == "cyclic":  # triangular: lr/10 -> lr -> lr/10 every 4 epochs
        up = max(1, 2 * task.steps_per_epoch)
        sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=lr / 10, max_lr=lr, step_size_up=up,
                                                  mode="triangular", cycle_momentum=False)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def _evaluate(task: Task, split: str, y: np.ndarray) -> tuple[float, float, torch.Tensor]:
    logits = task.predict(split).float().cpu()
    target = torch.tensor(np.asarray(y), dtype=torch.long)
    loss = float(F.cross_entropy(logits, target))
    return loss, float((logits.argmax(1) == target).float().mean()), logits


def train(task: Task, cfg: TrainConfig, lr: float, ckpt: Path, device: torch.device, precision: str,
          overwrite: bool = False, progress: bool | None = None, started: float | None = None,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Outcome:
    """Train `task`, resuming from `ckpt` when it holds a run with the same settings; return the outcome with
    the best epoch's weights loaded into `task.model`. `started` (perf_counter) is when the caller's work
    began (set-up time counts against --max-minutes)."""
    from tqdm.auto import tqdm

    started = time.perf_counter() if started is None else started
    settings = {**task.settings, "train": {k: v for k, v in asdict(cfg).items() if k not in ("max_minutes",)},
                "lr_resolved": lr}
    key = config_hash(json.loads(json.dumps(settings, default=str)))
    total_steps = cfg.epochs * task.steps_per_epoch
    opt, sched = _optimizer(task, cfg, lr, total_steps)
    state = _resume(ckpt, key, settings, overwrite)
    history, best, bad, elapsed0 = [], {"epoch": 0, "val_accuracy": -1.0, "state": None}, 0, 0.0
    resumed_at = None
    torch.manual_seed(cfg.seed)
    budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    if state is not None:
        task.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, bad, elapsed0 = state["history"], state["bad_epochs"], state["elapsed"]
        best = {"epoch": state["best_epoch"], "val_accuracy": state["best_val_accuracy"], "state": state["best"]}
        torch.set_rng_state(state["rng"])
    throughput, est_epoch_s = None, None
    stopped_by, why = _stopped_before(history, bad, elapsed0, cfg, budget)
    first = len(history) + 1 if why is None else cfg.epochs + 1
    if state is not None:
        kept = f"epoch {best['epoch']}, validation accuracy {best['val_accuracy']:.4f}"
        if why is None:
            resumed_at = first
            log(f"{task.name}: resuming at epoch {first} of {cfg.epochs} from {ckpt} (best so far: {kept})")
        else:  # nothing left to train (killed after the last checkpoint, before the outputs): finish from it
            log(f"{task.name}: checkpoint {ckpt} {why}; finishing from it (best: {kept})")
    for epoch in range(first, cfg.epochs + 1):
        t_epoch = t_warm = time.perf_counter()
        seen_warm, warm = 0, min(2, task.steps_per_epoch // 2)
        if task.train_mode:
            task.train_mode()
        else:
            task.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(total=task.steps_per_epoch, desc=f"{task.name} epoch {epoch}/{cfg.epochs}", unit="batch",
                   file=sys.stderr, dynamic_ncols=True, leave=False,
                   disable=(not progress) if progress is not None else None)
        with bar:
            for i, (xb, yb) in enumerate(task.batches(epoch)):
                with autocast(device, precision):
                    logits = task.forward(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise PipelineError(f"{task.name}: the training loss became {float(loss)} at epoch {epoch}; "
                                        f"lower --lr (it was {lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                n = len(yb)
                loss_sum += float(loss.detach()) * n
                correct += int((logits.argmax(1) == yb).sum())
                seen += n
                bar.update(1)
                if throughput is None and epoch == first:  # measured after warm-up batches (autotuning)
                    if i == warm - 1:
                        t_warm, seen_warm = time.perf_counter(), seen
                    if i == min(warm + 10, task.steps_per_epoch) - 1:
                        throughput = _first_estimate(task, cfg, t_warm, seen - seen_warm, started, elapsed0,
                                                     budget, log, epoch)
                        est_epoch_s = task.images_per_epoch / throughput
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        t_val = time.perf_counter()
        val_loss, val_acc, _ = _evaluate(task, "val", task.y_val)
        val_s = time.perf_counter() - t_val
        seconds = time.perf_counter() - t_epoch
        throughput = seen / seconds
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "val_loss": val_loss, "val_accuracy": val_acc, "seconds": round(seconds, 2),
                        "lr": float(opt.param_groups[0]["lr"])})
        if val_acc > best["val_accuracy"]:
            best = {"epoch": epoch, "val_accuracy": val_acc,
                    "state": {k: v.detach().clone() for k, v in task.model.state_dict().items()}}
            bad = 0
        else:
            bad += 1
        elapsed = elapsed0 + time.perf_counter() - started
        left = (cfg.epochs - epoch) * seconds
        log(f"{task.name} epoch {epoch}/{cfg.epochs}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}, "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}{' (best)' if best['epoch'] == epoch else ''}, "
            f"{seconds:.1f} s ({seen / seconds:.0f} img/s), ETA {_fmt(left)}")
        _checkpoint(ckpt, key, settings, task, opt, sched, history, best, bad, elapsed)
        fault_point("train:epoch")
        if cfg.patience and bad >= cfg.patience and epoch < cfg.epochs:
            stopped_by = "patience"
            log(f"{task.name}: stopping after epoch {epoch}: no better validation accuracy for {bad} epochs; "
                f"epoch {best['epoch']} is kept")
            break
        # the next epoch's time: this one's, less the first epoch's one-off warm-up (CUDA kernels loading)
        next_s = min(seconds, est_epoch_s + val_s) if epoch == first and est_epoch_s else seconds
        final_s = val_s * len(task.y_test) / max(len(task.y_val), 1)  # the best epoch's test pass
        if budget is not None and epoch < cfg.epochs and elapsed + next_s + final_s > budget:
            stopped_by = "budget"
            log(f"{task.name}: stopping after epoch {epoch}: another epoch (~{_fmt(next_s)}) would overrun "
                f"--max-minutes {cfg.max_minutes:g} ({_fmt(elapsed)} used)")
            break
    task.model.load_state_dict(best["state"])
    task.model.eval()
    _, _, test_logits = _evaluate(task, "test", task.y_test)  # its validation accuracy is known: best's
    if throughput is None:  # finished from a checkpoint: the throughput of the last epoch it recorded
        throughput = task.images_per_epoch / max(history[-1]["seconds"], 1e-9)
    return Outcome(history, best["epoch"], len(history), stopped_by,
                   round(elapsed0 + time.perf_counter() - started, 2), best["val_accuracy"], test_logits, resumed_at,
                   round(throughput, 1))


def _stopped_before(history: list[dict], bad: int, elapsed: float, cfg: TrainConfig, budget: float | None
                    ) -> tuple[str, str | None]:
    """Why a resumed checkpoint's run (`history`, `bad` epochs without a better validation accuracy, `elapsed`
    seconds) trains no further, as the loop would have decided after its last epoch: (stopped_by, what the
    checkpoint holds), or ("epochs", None) while epochs are left to train."""
    done = len(history)
    if done >= cfg.epochs:  # checked first: an unbroken run that ends at the last epoch says "epochs"
        return "epochs", f"already holds all {done} epochs"
    if done and cfg.patience and bad >= cfg.patience:
        return "patience", f"stopped early after epoch {done} (no better validation accuracy for {bad} epochs)"
    if done and budget is not None and elapsed + history[-1]["seconds"] > budget:
        return "budget", (f"holds {done} of {cfg.epochs} epochs, and another would overrun --max-minutes "
                          f"{cfg.max_minutes:g} ({_fmt(elapsed)} used)")
    return "epochs", None


def _first_estimate(task, cfg, t0, seen, started, elapsed0, budget, log, epoch) -> float:
    """After a few batches of the first epoch run here (`seen` images since `t0`): the measured throughput and
    an ETA; refuse a budget that cannot hold one epoch."""
    rate = seen / (time.perf_counter() - t0)
    epoch_s = task.images_per_epoch / rate
    left = epoch_s * (cfg.epochs - epoch + 1)
    log(f"{task.name}: {rate:.0f} training img/s measured -> ~{_fmt(epoch_s)} per epoch, "
        f"{cfg.epochs - epoch + 1} epochs left: ETA {_fmt(left)} (less if early stopping triggers)")
    if budget is not None:
        used = elapsed0 + time.perf_counter() - started
        if used + epoch_s > budget * 1.1:
            raise PipelineError(f"--max-minutes {cfg.max_minutes:g} is too little for one epoch of {task.name} "
                                f"(~{_fmt(epoch_s)} at {rate:.0f} img/s measured, {_fmt(used)} already used); "
                                f"give at least {math.ceil((used + epoch_s) / 60 * 1.2)} min, or use fewer "
                                f"images (--limit), a smaller --image-size or fewer unfrozen blocks")
    return rate


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _checkpoint(path: Path, key: str, settings: dict, task: Task, opt, sched, history, best, bad, elapsed):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": "pipeline-checkpoint/1", "settings_hash": key,
             "settings": json.dumps(settings, default=str, sort_keys=True),
             "model": task.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "history": history, "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"],
             "best": best["state"], "bad_epochs": bad, "elapsed": elapsed, "rng": torch.get_rng_state()}
    with replacing(path) as f:
        torch.save(state, f)


def _resume(path: Path, key: str, settings: dict, overwrite: bool) -> dict | None:
    if not path.exists():
        return None
    if overwrite:
        path.unlink()
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: not ours to delete
        raise PipelineError(f"{path}: cannot read this checkpoint ({type(e).__name__}); move it away, or pass "
                            f"--overwrite to start over") from None
    if not isinstance(state, dict) or state.get("format") != "pipeline-checkpoint/1":
        raise PipelineError(f"{path} is not a pipeline checkpoint; move it away, or pass --overwrite to start over")
    if state["settings_hash"] != key:
        raise PipelineError(f"{path} is a checkpoint made with other settings ({_diff(state['settings'], settings)}); "
                            f"rerun with the same options to resume it, or pass --overwrite to start over")
    return state


def _diff(old_json: str, new: dict) -> str:
    old = json.loads(old_json)
    new = json.loads(json.dumps(new, default=str, sort_keys=True))
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = [k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
    return "; ".join(f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}" for k in keys[:3]) or "settings differ"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches for one epoch: a permutation seeded by (seed, epoch), so a resumed run sees the same
    order; a last batch of one row (which batch norm cannot train on) is merged into the one before."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    cuts = list(range(batch_size, n, batch_size))
    if cuts and n - cuts[-1] < 2:
        cuts.pop()
    return np.split(perm, cuts)
