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
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.data.folder import refuse_output_inside
from pipeline.files import folder_lock
from pipeline.hardware import resolve_device
from pipeline.models.heads import LABELS
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
from pipeline.train.loop import Task, checkpoint_path, resolve_precision, shuffled_batches, stratified_split, train


def pending(out: Path, fs: FeatureSet, heads) -> list[str]:
    """The heads with no finished record (and saved model) for these features in out/results.json."""
    done = {r["classifier"] for r in read_results(out) if r["feature_set"] == fs.name
            and r.get("features_fingerprint") == fs.fingerprint and has_model(out, fs.name, r["classifier"])}
    return [h for h in heads if h not in done]


def train_head(fs: FeatureSet, req: TrainRequest, progress: bool | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Train one head on `fs` and write its record, learning curve and model under `req.out` (locked)."""
    req.head.check()
    req.train.check()
    refuse_output_inside(req.out, fs.image_folder)
    with folder_lock(req.out, "pipeline train"):
        check_results_file(req.out, fs.labels_sha256)
        return _train_head(fs, req, progress, log)


def _train_head(fs: FeatureSet, req: TrainRequest, progress, log) -> dict:
    started = time.perf_counter()
    cfg, spec = req.train, req.head
    if spec.transform == "auto":  # power normalisation suits non-negative pooled activations, not any features
        spec = replace(spec, transform="sqrt" if float(np.min(fs.X_train)) >= 0 else "none")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    tr, va = stratified_split(fs.y_train, cfg.val_fraction, fs.classes, cfg.seed)
    X = torch.tensor(np.asarray(fs.X_train, dtype=np.float32), device=device)  # a copy: stores are read-only maps
    y = torch.tensor(np.asarray(fs.y_train, dtype=np.int64), device=device)
    X_test = torch.tensor(np.asarray(fs.X_test, dtype=np.float32), device=device)
    lr = HEAD_LR[spec.kind] if cfg.lr == "auto" else float(cfg.lr)
    bs = min(cfg.batch_size, len(tr))
    name = f"{fs.name} {spec.kind}"

    def task(rows: np.ndarray, phase: str) -> Task:
        rows_t, va_t = torch.as_tensor(rows, device=device), torch.as_tensor(va, device=device)
        torch.manual_seed(cfg.seed)
        model = make_head(spec, X.shape[1], len(fs.classes)).to(device)
        model[1].fit(model[0](X[rows_t]))

        def batches(epoch):
            for idx in shuffled_batches(len(rows), bs, cfg.seed, epoch):
                sel = rows_t[torch.as_tensor(idx, device=device)]
                yield X[sel], y[sel]

        @torch.no_grad()
        def predict(split):
            model.eval()
            src = X[va_t] if split == "val" else X_test
            return torch.cat([model(src[a:a + 8192]) for a in range(0, len(src), 8192)])

        return Task(name=name + (" (refit on all rows)" if phase == "refit" else ""), model=model,
                    params=list(model.parameters()), batches=batches,
                    steps_per_epoch=len(shuffled_batches(len(rows), bs, cfg.seed, 1)), forward=model,
                    predict=predict, y_val=fs.y_train[va], y_test=np.asarray(fs.y_test), images_per_epoch=len(rows),
                    settings={"features": fs.fingerprint, "feature_set": fs.name, "head": spec.describe(),
                              "device": device.type, "precision": precision, "phase": phase})

    stem = record_stem(fs.name, spec.kind)
    ckpt = checkpoint_path(req.out, stem)
    first = task(tr, "select")
    chosen = train(first, cfg, lr, ckpt, device, precision, req.overwrite, progress, started, log)
    result, refit, model = chosen, None, first.model
    if req.refit:
        refit_ckpt = checkpoint_path(req.out, f"{stem}-refit")
        log(f"{name}: refitting on all {len(fs.y_train):,} training rows for the {chosen.best_epoch} epochs "
            f"early stopping chose")
        t = time.perf_counter()
        final = task(np.arange(len(fs.y_train)), "refit")
        result = train(final, replace(cfg, epochs=chosen.best_epoch, patience=0, max_minutes=None), lr, refit_ckpt,
                       device, precision, req.overwrite, progress, None, log)
        refit = {"epochs": chosen.best_epoch, "rows": len(fs.y_train), "seconds": round(time.perf_counter() - t, 2),
                 "history": result.history}
        model = final.model
    pred = result.test_logits.argmax(1).numpy()
    rec = make_record(
        fs.name, spec.kind, LABELS[spec.kind], y_test=fs.y_test, pred=pred, classes=fs.classes,
        labels_sha256=fs.labels_sha256, n_train=len(fs.y_train),
        best_params={**spec.describe(), "lr": lr, "lr_schedule": cfg.lr_schedule, "batch_size": bs,
                     "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing, "refit": req.refit},
        cv_mean=chosen.val_accuracy, cv_std=0.0, cv_folds=1, tune_rows=len(tr), candidates=1,
        fit_seconds=round(time.perf_counter() - started, 2), backend="torch", device=str(device),
        validation=f"stratified holdout: {cfg.val_fraction:.0%} of the training split ({len(va):,} rows)",
        precision=precision, dataset=fs.dataset, features_fingerprint=fs.fingerprint,
        **_training_fields(chosen, cfg), refit=refit)
    save_predictions(req.out, rec, pred)
    finish(req.out, rec, model, {"kind": "head", "head": spec.describe(), "in_dim": int(X.shape[1])},
           about_features(fs), ckpt, extra=[checkpoint_path(req.out, f"{stem}-refit")])
    log(f"{fs.name:>20} {spec.kind:<7} test {rec['test_accuracy']:.4f}  val {rec['cv_mean']:.4f}  best epoch "
        f"{rec['best_epoch']} of {rec['epochs_run']} ({rec['stopped_by']})"
        f"{', refit on all rows' if refit else ''}  {rec['fit_seconds']:.0f} s on {rec['device_name']}, {precision}")
    return rec


def _training_fields(result, cfg: TrainConfig) -> dict:
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
