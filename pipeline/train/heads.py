"""`pipeline train`: a torch head trained on a stored feature set, beside the classical models.

- `linear`: softmax regression on standardised features.
- `mlp`: standardised features -> dropout -> hidden layer(s) with batch norm, ReLU and dropout -> classes.

Inputs are power-normalised first where every training feature is non-negative (`auto`; `sqrt`: sign(x) *
sqrt(|x|), a known help for pooled CNN activations, which are:
+0.1 to +0.2 points for the MLP on EfficientNet-Lite0's Fashion-MNIST embeddings, measured), then
standardised with the training rows' statistics; both live in the saved model. With `refit` (the default),
once early stopping has chosen the number of epochs on the validation split, a fresh head is trained on
all training rows (training + validation) for that many epochs, as scikit-learn's searches refit the best
candidate (+0.2 to +0.4 points measured); the test split is used once, by that model.

Training (AdamW, LR schedule, early stopping on a stratified validation split, checkpoints, resume) is
`pipeline.train.loop`'s; this module builds the head, feeds it the store's rows, and writes the record into
the same results.json as classify, the learning curve, and the model (safetensors + a JSON card).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.console import stderr
from pipeline.data.folder import refuse_output_inside
from pipeline.files import folder_lock
from pipeline.hardware import resolve_device
from pipeline.models.heads import LABELS, HeadSpec
from pipeline.models.nets import make_head
from pipeline.models.saved import about_features, has_model, save_torch_model
from pipeline.render.figures import learning_curve
from pipeline.results import (
    check_results_file,
    curve_path,
    make_record,
    read_results,
    record_stem,
    save_predictions,
    write_results,
)
from pipeline.store.featuresets import FeatureSet
from pipeline.train.config import HEAD_LR, TrainConfig, TrainRequest
from pipeline.train.loop import (
    Outcome,
    Task,
    checkpoint_path,
    shuffled_batches,
    stratified_split,
    train,
    training_precision,
)


def pending(out: Path, fs: FeatureSet, heads) -> list[str]:
    """The heads with no finished record (and saved model) for these features in out/results.json."""
    done = {r["classifier"] for r in read_results(out) if r["feature_set"] == fs.name
            and r.get("features_fingerprint") == fs.fingerprint and has_model(out, fs.name, r["classifier"])}
    return [h for h in heads if h not in done]


def train_head(fs: FeatureSet, req: TrainRequest, progress: bool | None = None,
               log: Callable[[str], None] = stderr) -> dict:
    """Train one head on `fs` and write its record, learning curve and model under `req.out` (locked)."""
    req.head.check()
    req.train.check()
    refuse_output_inside(req.out, fs.image_folder)
    with folder_lock(req.out, "pipeline train"):
        check_results_file(req.out, fs.labels_sha256)
        return _train_head_locked(fs, req, progress, log)


def _train_head_locked(fs: FeatureSet, req: TrainRequest, progress, log) -> dict:
    """The stage, in `req.out` locked: select the epochs by early stopping, refit on all rows (unless
    `req.refit` is off), then write the record, predictions and model."""
    started = time.perf_counter()
    run = _HeadRun(fs, req, _resolved_transform(req.head, fs), progress, log)
    ckpt, refit_ckpt = checkpoint_path(req.out, run.stem), checkpoint_path(req.out, f"{run.stem}-refit")
    first = run.task(run.tr, "select")
    chosen = train(first, run.cfg, run.lr, ckpt, run.device, run.precision, req.overwrite, progress, started, log)
    result, refit, model = chosen, None, first.model
    if req.refit:
        result, refit, model = run.refit_on_all_rows(chosen, refit_ckpt)
    rec = run.record(chosen, result, refit, started)
    save_predictions(req.out, rec, result.test_logits.argmax(1).numpy())
    finish(req.out, rec, model, {"kind": "head", "head": run.spec.describe(), "in_dim": int(run.X.shape[1])},
           about_features(fs), ckpt, extra=[refit_ckpt])
    log(f"{fs.name:>20} {run.spec.kind:<7} test {rec['test_accuracy']:.4f}  val {rec['cv_mean']:.4f}  best epoch "
        f"{rec['best_epoch']} of {rec['epochs_run']} ({rec['stopped_by']})"
        f"{', refit on all rows' if refit else ''}  {rec['fit_seconds']:.0f} s on {rec['device_name']}, "
        f"{run.precision}")
    return rec


def _resolved_transform(spec: HeadSpec, fs: FeatureSet) -> HeadSpec:
    """`spec` with transform "auto" decided: sqrt when every training feature is >= 0, else none."""
    if spec.transform == "auto":  # power normalisation suits non-negative pooled activations, not any features
        return replace(spec, transform="sqrt" if float(np.min(fs.X_train)) >= 0 else "none")
    return spec


class _HeadRun:
    """One head trained on one feature set: the features on the device, the validation split, the learning
    rate and batch size, and the task of each phase ("select": early stopping on the validation rows; "refit":
    all training rows)."""

    def __init__(self, fs: FeatureSet, req: TrainRequest, spec: HeadSpec, progress, log):
        self.fs, self.req, self.cfg, self.spec, self.progress, self.log = fs, req, req.train, spec, progress, log
        self.device = resolve_device(self.cfg.device)
        self.precision = training_precision(self.cfg.precision, self.device)
        self.tr, self.va = stratified_split(fs.y_train, self.cfg.val_fraction, fs.classes, self.cfg.seed)
        dev = self.device  # copies: stores are read-only maps
        self.X = torch.tensor(np.asarray(fs.X_train, dtype=np.float32), device=dev)
        self.y = torch.tensor(np.asarray(fs.y_train, dtype=np.int64), device=dev)
        self.X_test = torch.tensor(np.asarray(fs.X_test, dtype=np.float32), device=dev)
        self.lr = HEAD_LR[spec.kind] if self.cfg.lr == "auto" else float(self.cfg.lr)
        self.batch_size = min(self.cfg.batch_size, len(self.tr))
        self.name = f"{fs.name} {spec.kind}"
        self.stem = record_stem(fs.name, spec.kind)

    def task(self, rows: np.ndarray, phase: str) -> Task:
        """A fresh (seeded) head, its inputs' statistics fitted on `rows`, to train on `rows`."""
        fs, cfg, dev, bs = self.fs, self.cfg, self.device, self.batch_size
        rows_t, va_t = torch.as_tensor(rows, device=dev), torch.as_tensor(self.va, device=dev)
        torch.manual_seed(cfg.seed)
        model = make_head(self.spec, self.X.shape[1], len(fs.classes)).to(dev)
        model[1].fit(model[0](self.X[rows_t]))

        def batches(epoch):
            for idx in shuffled_batches(len(rows), bs, cfg.seed, epoch):
                sel = rows_t[torch.as_tensor(idx, device=dev)]
                yield self.X[sel], self.y[sel]

        @torch.no_grad()
        def predict(split):
            model.eval()
            src = self.X[va_t] if split == "val" else self.X_test
            return torch.cat([model(src[a:a + 8192]) for a in range(0, len(src), 8192)])

        return Task(name=self.name + (" (refit on all rows)" if phase == "refit" else ""), model=model,
                    params=list(model.parameters()), batches=batches,
                    steps_per_epoch=len(shuffled_batches(len(rows), bs, cfg.seed, 1)), forward=model,
                    predict=predict, y_val=fs.y_train[self.va], y_test=np.asarray(fs.y_test),
                    images_per_epoch=len(rows),
                    settings={"features": fs.fingerprint, "feature_set": fs.name, "head": self.spec.describe(),
                              "device": dev.type, "precision": self.precision, "phase": phase})

    def refit_on_all_rows(self, chosen: Outcome, ckpt: Path) -> tuple[Outcome, dict, nn.Module]:
        """A fresh head trained on every training row for the epochs early stopping chose: its outcome, the
        record's `refit` entry and the model."""
        n = len(self.fs.y_train)
        self.log(f"{self.name}: refitting on all {n:,} training rows for the {chosen.best_epoch} epochs "
                 f"early stopping chose")
        t = time.perf_counter()
        final = self.task(np.arange(n), "refit")
        cfg = replace(self.cfg, epochs=chosen.best_epoch, patience=0, max_minutes=None)
        result = train(final, cfg, self.lr, ckpt, self.device, self.precision, self.req.overwrite, self.progress,
                       None, self.log)
        refit = {"epochs": chosen.best_epoch, "rows": n, "seconds": round(time.perf_counter() - t, 2),
                 "history": result.history}
        return result, refit, final.model

    def record(self, chosen: Outcome, result: Outcome, refit: dict | None, started: float) -> dict:
        """The results.json record: the test predictions of `result`, the validation accuracy of `chosen`."""
        fs, spec, cfg = self.fs, self.spec, self.cfg
        return make_record(
            fs.name, spec.kind, LABELS[spec.kind], y_test=fs.y_test, pred=result.test_logits.argmax(1).numpy(),
            classes=fs.classes, labels_sha256=fs.labels_sha256, n_train=len(fs.y_train),
            best_params={**spec.describe(), "lr": self.lr, "lr_schedule": cfg.lr_schedule,
                         "batch_size": self.batch_size, "weight_decay": cfg.weight_decay,
                         "label_smoothing": cfg.label_smoothing, "refit": self.req.refit},
            cv_mean=chosen.val_accuracy, cv_std=0.0, cv_folds=1, tune_rows=len(self.tr), candidates=1,
            fit_seconds=round(time.perf_counter() - started, 2), backend="torch", device=str(self.device),
            validation=f"stratified holdout: {cfg.val_fraction:.0%} of the training split ({len(self.va):,} rows)",
            precision=self.precision, dataset=fs.dataset, features_fingerprint=fs.fingerprint,
            **_training_fields(chosen, cfg), refit=refit)


def _training_fields(result, cfg: TrainConfig) -> dict:
    """The record's fields about the training run `result` (the one early stopping chose)."""
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "epochs": cfg.epochs,
            "stopped_by": result.stopped_by, "history": result.history, "train_img_per_s": result.throughput,
            "resumed_at_epoch": result.resumed_at, "max_minutes": cfg.max_minutes}


def finish(out: Path, rec: dict, model: nn.Module, architecture: dict, about: dict, ckpt: Path,
           extra: list[Path] = ()) -> None:
    """Model, then record (+ derived tables), then learning curve; the checkpoint goes last (a kill before
    that reruns from it and rewrites the same outputs), and its folder with it when nothing else is in it."""
    rec["model"] = save_torch_model(out, rec, model, architecture, about)
    write_results(out, [rec])
    learning_curve(rec, Path(out) / curve_path(rec))
    for path in (ckpt, *extra):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # rmdir refuses a folder that holds anything (another run's checkpoint)
        Path(ckpt).parent.rmdir()
