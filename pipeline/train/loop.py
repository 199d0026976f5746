"""The training loop shared by `pipeline train` (a head on stored features) and `pipeline finetune` (a
network on images): AdamW, a named LR schedule stepped per batch, early stopping on a stratified validation
split of the training data (never the test split), the best epoch restored, a checkpoint written atomically
after every epoch and resumed by a rerun of the same command, a progress bar per epoch, a time budget.

What is trained and on which batches is the caller's business (`Task`); this module knows nothing of
features, images or backbones.
"""
from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.console import progress_bar, stderr
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


def training_precision(precision: str, device: torch.device) -> str:
    """The precision training runs in: bf16 autocast where the hardware has it, else fp32 (no fp16 here:
    it needs a loss scaler, and bf16 does not)."""
    if precision not in TRAIN_PRECISIONS:
        raise PipelineError(f"--precision {precision!r}: training takes {', '.join(TRAIN_PRECISIONS)}")
    return auto_precision(device, half=False) if precision == "auto" else precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` when `precision` is bf16; a no-op context otherwise."""
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
    """Where the run named `stem` keeps its checkpoint under `out`."""
    return Path(out) / CHECKPOINTS_DIR / f"{stem}.pt"


def _optimizer_and_schedule(task: Task, cfg: TrainConfig, lr: float, total_steps: int):
    """AdamW over the task's parameters and the LR schedule `cfg` names, stepped once a batch."""
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


def _evaluate_split(task: Task, split: str, y: np.ndarray) -> tuple[float, float, torch.Tensor]:
    """(loss, accuracy, logits) of the task's predictions for `split` ("val" or "test") against `y`."""
    logits = task.predict(split).float().cpu()
    target = torch.tensor(np.asarray(y), dtype=torch.long)
    loss = float(F.cross_entropy(logits, target))
    return loss, float((logits.argmax(1) == target).float().mean()), logits


def train(task: Task, cfg: TrainConfig, lr: float, ckpt: Path, device: torch.device, precision: str,
          overwrite: bool = False, progress: bool | None = None, started: float | None = None,
          log: Callable[[str], None] = stderr) -> Outcome:
    """Train `task`, resuming from `ckpt` when it holds a run with the same settings; return the outcome with
    the best epoch's weights loaded into `task.model`. `started` (perf_counter) is when the caller's work
    began (set-up time counts against --max-minutes)."""
    started = time.perf_counter() if started is None else started
    run = _TrainingRun(task, cfg, lr, ckpt, device, precision, started, progress, log)
    state = _resumable_checkpoint(ckpt, run.key, run.settings, overwrite)
    torch.manual_seed(cfg.seed)
    if state is not None:
        run.restore(state)
    stopped_by, why = _checkpoint_done_reason(run.history, run.bad, run.elapsed0, cfg, run.budget)
    first = len(run.history) + 1 if why is None else cfg.epochs + 1
    resumed_at = run.say_resumed(first, why) if state is not None else None
    for epoch in range(first, cfg.epochs + 1):
        stop = run.epoch(epoch, first)
        if stop is not None:
            stopped_by = stop
            break
    return run.outcome(stopped_by, resumed_at)


class _TrainingRun:
    """One call of `train`: what it was given, the optimizer, and the state its epochs carry from one to the
    next (what a checkpoint holds, plus the throughput measured here)."""

    def __init__(self, task: Task, cfg: TrainConfig, lr: float, ckpt: Path, device: torch.device, precision: str,
                 started: float, progress: bool | None, log: Callable[[str], None]):
        self.task, self.cfg, self.lr, self.ckpt, self.log = task, cfg, lr, ckpt, log
        self.device, self.precision, self.started, self.progress = device, precision, started, progress
        self.budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        self.settings = {**task.settings, "train": {k: v for k, v in asdict(cfg).items() if k not in ("max_minutes",)},
                         "lr_resolved": lr}
        self.key = config_hash(json.loads(json.dumps(self.settings, default=str)))
        self.opt, self.sched = _optimizer_and_schedule(task, cfg, lr, cfg.epochs * task.steps_per_epoch)
        self.history: list[dict] = []
        self.best = {"epoch": 0, "val_accuracy": -1.0, "state": None}
        self.bad = 0  # epochs since the best one
        self.elapsed0 = 0.0  # seconds the checkpoint's earlier runs took
        self.throughput: float | None = None  # training images per second, measured
        self.est_epoch_s: float | None = None  # the first epoch's time without its one-off warm-up
        self.warm_mark = (0.0, 0)  # (time, images seen) at the end of the first epoch's warm-up batches

    def restore(self, state: dict) -> None:
        """Carry on from a checkpoint: weights, optimizer, schedule, history, best epoch and random state."""
        self.task.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history, self.bad, self.elapsed0 = state["history"], state["bad_epochs"], state["elapsed"]
        self.best = {"epoch": state["best_epoch"], "val_accuracy": state["best_val_accuracy"], "state": state["best"]}
        torch.set_rng_state(state["rng"])

    def say_resumed(self, first: int, why: str | None) -> int | None:
        """Say what is done with a restored checkpoint; the first epoch it resumes at (None: none is left)."""
        kept = f"epoch {self.best['epoch']}, validation accuracy {self.best['val_accuracy']:.4f}"
        if why is None:
            self.log(f"{self.task.name}: resuming at epoch {first} of {self.cfg.epochs} from {self.ckpt} "
                     f"(best so far: {kept})")
            return first
        # nothing left to train (killed after the last checkpoint, before the outputs): finish from it
        self.log(f"{self.task.name}: checkpoint {self.ckpt} {why}; finishing from it (best: {kept})")
        return None

    def epoch(self, epoch: int, first: int) -> str | None:
        """Train one epoch, validate, record and checkpoint it; why to stop after it ("patience", "budget"),
        or None to go on."""
        t_epoch = time.perf_counter()
        loss_sum, correct, seen = self.train_batches(epoch, first, t_epoch)
        t_val = time.perf_counter()
        val_loss, val_acc, _ = _evaluate_split(self.task, "val", self.task.y_val)
        val_s = time.perf_counter() - t_val
        seconds = time.perf_counter() - t_epoch
        self.throughput = seen / seconds
        self.record_epoch({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                           "val_loss": val_loss, "val_accuracy": val_acc, "seconds": round(seconds, 2),
                           "lr": float(self.opt.param_groups[0]["lr"])})
        elapsed = self.elapsed0 + time.perf_counter() - self.started
        left = (self.cfg.epochs - epoch) * seconds
        self.log(f"{self.task.name} epoch {epoch}/{self.cfg.epochs}: train loss {loss_sum / seen:.4f} acc "
                 f"{correct / seen:.4f}, val loss {val_loss:.4f} acc {val_acc:.4f}"
                 f"{' (best)' if self.best['epoch'] == epoch else ''}, {seconds:.1f} s ({seen / seconds:.0f} img/s), "
                 f"ETA {_format_duration(left)}")
        self.write_checkpoint(elapsed)
        fault_point("train:epoch")
        return self.stop_reason(epoch, first, seconds, val_s, elapsed)

    def train_batches(self, epoch: int, first: int, t_epoch: float) -> tuple[float, int, int]:
        """One pass over the epoch's batches, with its progress bar: (summed loss, correct, images seen)."""
        task = self.task
        self.warm_mark = (t_epoch, 0)
        if task.train_mode:
            task.train_mode()
        else:
            task.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        with progress_bar(task.steps_per_epoch, progress=self.progress, desc=f"{task.name} epoch {epoch}/"
                          f"{self.cfg.epochs}", unit="batch", leave=False) as bar:
            for i, (xb, yb) in enumerate(task.batches(epoch)):
                loss, logits = self.step(xb, yb, epoch)
                n = len(yb)
                loss_sum += float(loss.detach()) * n
                correct += int((logits.argmax(1) == yb).sum())
                seen += n
                bar.update(1)
                if self.throughput is None and epoch == first:  # measured after warm-up batches (autotuning)
                    self.time_first_batches(i, seen, epoch)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        return loss_sum, correct, seen

    def step(self, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer (and schedule) step on a batch: its (loss, logits); a loss gone non-finite is refused."""
        with autocast(self.device, self.precision):
            logits = self.task.forward(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=self.cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise PipelineError(f"{self.task.name}: the training loss became {float(loss)} at epoch {epoch}; "
                                f"lower --lr (it was {self.lr:g})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss, logits

    def time_first_batches(self, i: int, seen: int, epoch: int) -> None:
        """In the first epoch run here: mark the end of the warm-up batches, then, up to 10 batches on,
        measure the throughput and estimate the epoch's time (refusing a budget too small for one epoch)."""
        warm = min(2, self.task.steps_per_epoch // 2)
        if i == warm - 1:
            self.warm_mark = (time.perf_counter(), seen)
        if i == min(warm + 10, self.task.steps_per_epoch) - 1:
            t_warm, seen_warm = self.warm_mark
            self.throughput = _first_throughput_estimate(self.task, self.cfg, t_warm, seen - seen_warm, self.started,
                                                         self.elapsed0, self.budget, self.log, epoch)
            self.est_epoch_s = self.task.images_per_epoch / self.throughput

    def record_epoch(self, row: dict) -> None:
        """Add the epoch to the history; keep a copy of its weights when its validation accuracy is the best."""
        self.history.append(row)
        if row["val_accuracy"] > self.best["val_accuracy"]:
            self.best = {"epoch": row["epoch"], "val_accuracy": row["val_accuracy"],
                         "state": {k: v.detach().clone() for k, v in self.task.model.state_dict().items()}}
            self.bad = 0
        else:
            self.bad += 1

    def stop_reason(self, epoch: int, first: int, seconds: float, val_s: float, elapsed: float) -> str | None:
        """After `epoch`: "patience" when validation accuracy stopped improving, "budget" when another epoch
        and the test pass would overrun --max-minutes (said in the log), else None."""
        cfg, task = self.cfg, self.task
        if cfg.patience and self.bad >= cfg.patience and epoch < cfg.epochs:
            self.log(f"{task.name}: stopping after epoch {epoch}: no better validation accuracy for {self.bad} "
                     f"epochs; epoch {self.best['epoch']} is kept")
            return "patience"
        # the next epoch's time: this one's, less the first epoch's one-off warm-up (CUDA kernels loading)
        next_s = min(seconds, self.est_epoch_s + val_s) if epoch == first and self.est_epoch_s else seconds
        final_s = val_s * len(task.y_test) / max(len(task.y_val), 1)  # the best epoch's test pass
        if self.budget is not None and epoch < cfg.epochs and elapsed + next_s + final_s > self.budget:
            self.log(f"{task.name}: stopping after epoch {epoch}: another epoch (~{_format_duration(next_s)}) would "
                     f"overrun --max-minutes {cfg.max_minutes:g} ({_format_duration(elapsed)} used)")
            return "budget"
        return None

    def write_checkpoint(self, elapsed: float) -> None:
        """Everything a rerun needs to carry on after this epoch, written atomically."""
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": "pipeline-checkpoint/1", "settings_hash": self.key,
                 "settings": json.dumps(self.settings, default=str, sort_keys=True),
                 "model": self.task.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "history": self.history, "best_epoch": self.best["epoch"],
                 "best_val_accuracy": self.best["val_accuracy"], "best": self.best["state"], "bad_epochs": self.bad,
                 "elapsed": elapsed, "rng": torch.get_rng_state()}
        buf = io.BytesIO()  # serialised first: torch's zip writer turns a full disk into a RuntimeError of its own
        torch.save(state, buf)
        with replacing(self.ckpt) as f:  # a full disk here is an OSError, and one line
            f.write(buf.getbuffer())

    def outcome(self, stopped_by: str, resumed_at: int | None) -> Outcome:
        """The best epoch's weights loaded (and in eval mode), its test logits and the run's figures."""
        task = self.task
        task.model.load_state_dict(self.best["state"])
        task.model.eval()
        _, _, test_logits = _evaluate_split(task, "test", task.y_test)  # its validation accuracy is known: best's
        throughput = self.throughput
        if throughput is None:  # finished from a checkpoint: the throughput of the last epoch it recorded
            throughput = task.images_per_epoch / max(self.history[-1]["seconds"], 1e-9)
        return Outcome(self.history, self.best["epoch"], len(self.history), stopped_by,
                       round(self.elapsed0 + time.perf_counter() - self.started, 2), self.best["val_accuracy"],
                       test_logits, resumed_at, round(throughput, 1))


def _checkpoint_done_reason(history: list[dict], bad: int, elapsed: float, cfg: TrainConfig, budget: float | None
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
                          f"{cfg.max_minutes:g} ({_format_duration(elapsed)} used)")
    return "epochs", None


def _first_throughput_estimate(task, cfg, t0, seen, started, elapsed0, budget, log, epoch) -> float:
    """After a few batches of the first epoch run here (`seen` images since `t0`): the measured throughput and
    an ETA; refuse a budget that cannot hold one epoch."""
    rate = seen / (time.perf_counter() - t0)
    epoch_s = task.images_per_epoch / rate
    left = epoch_s * (cfg.epochs - epoch + 1)
    log(f"{task.name}: {rate:.0f} training img/s measured -> ~{_format_duration(epoch_s)} per epoch, "
        f"{cfg.epochs - epoch + 1} epochs left: ETA {_format_duration(left)} (less if early stopping triggers)")
    if budget is not None:
        used = elapsed0 + time.perf_counter() - started
        if used + epoch_s > budget * 1.1:
            raise PipelineError(f"--max-minutes {cfg.max_minutes:g} is too little for one epoch of {task.name} "
                                f"(~{_format_duration(epoch_s)} at {rate:.0f} img/s measured, "
                                f"{_format_duration(used)} already used); "
                                f"give at least {math.ceil((used + epoch_s) / 60 * 1.2)} min, or use fewer "
                                f"images (--limit), a smaller --image-size or fewer unfrozen blocks")
    return rate


def _format_duration(seconds: float) -> str:
    """1h02m, 3m05s or 12s."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _resumable_checkpoint(path: Path, key: str, settings: dict, overwrite: bool) -> dict | None:
    """The checkpoint at `path` to resume, or None (none there; or `overwrite`, which deletes it). A damaged
    or foreign file, or one made with other settings (`key`), is refused."""
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
        raise PipelineError(f"{path} is a checkpoint made with other settings "
                            f"({_changed_settings(state['settings'], settings)}); "
                            f"rerun with the same options to resume it, or pass --overwrite to start over")
    return state


def _changed_settings(old_json: str, new: dict) -> str:
    """The first three settings that differ, 'key: old -> new' (nested keys dotted), or "settings differ"."""
    old = json.loads(old_json)
    new = json.loads(json.dumps(new, default=str, sort_keys=True))
    flat_old, flat_new = _dotted_keys(old), _dotted_keys(new)
    keys = [k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
    return "; ".join(f"{k}: {flat_old.get(k)} -> {flat_new.get(k)}" for k in keys[:3]) or "settings differ"


def _dotted_keys(d: dict, prefix: str = "") -> dict:
    """A nested dict flattened: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_dotted_keys(v, f"{prefix}{k}."))
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
