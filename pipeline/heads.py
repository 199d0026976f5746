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
`pipeline.training`'s; this module builds the head, feeds it the store's rows, and writes the record into
the same results.json as classify, the learning curve, and the model (safetensors + a JSON card).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.errors import PipelineError
from pipeline.featuresets import FeatureSet
from pipeline.store import folder_lock
from pipeline.training import (
    Task,
    TrainConfig,
    checkpoint_path,
    resolve_precision,
    shuffled_batches,
    stratified_split,
    train,
)

HEADS = ("linear", "mlp")
TRANSFORMS = ("auto", "sqrt", "none")
LABELS = {"linear": "Linear head", "mlp": "MLP head"}
AUTO_LR = {"linear": 1e-2, "mlp": 3e-3}  # one-cycle peak LR with standardised inputs, AdamW
DEFAULT_EPOCHS = {"linear": 20, "mlp": 20}
DEFAULT_BATCH = 512


@dataclass
class HeadSpec:
    """The head's architecture: what a saved model's card holds to rebuild it."""
    kind: str = "mlp"
    hidden: tuple[int, ...] = (512,)
    input_dropout: float = 0.2
    dropout: float = 0.3
    transform: str = "auto"  # sqrt | none | auto: sqrt when every training feature is >= 0 (pooled activations)

    def check(self) -> None:
        if self.kind not in HEADS:
            raise PipelineError(f"--head {self.kind!r}: use one of {', '.join(HEADS)}")
        if self.kind == "mlp" and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise PipelineError(f"--hidden {','.join(map(str, self.hidden))}: give one or more layer widths, e.g. 512")
        if self.transform not in TRANSFORMS:
            raise PipelineError(f"--input-transform {self.transform!r}: use one of {', '.join(TRANSFORMS)}")
        for name, p in (("--input-dropout", self.input_dropout), ("--dropout", self.dropout)):
            if not 0 <= p < 1:
                raise PipelineError(f"{name} {p}: use a probability in [0, 1)")

    def describe(self) -> dict:
        if self.kind == "linear":
            return {"kind": "linear", "transform": self.transform}
        return {"kind": "mlp", "hidden": list(self.hidden), "input_dropout": self.input_dropout,
                "dropout": self.dropout, "transform": self.transform}


class SignedSqrt(nn.Module):
    """Power normalisation: sign(x) * sqrt(|x|)."""

    def forward(self, x):
        return torch.sign(x) * torch.sqrt(torch.abs(x))


class Standardize(nn.Module):
    """(x - mean) / std with the training rows' statistics, kept in the model (a saved head needs no scaler)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, X: torch.Tensor) -> Standardize:
        self.mean.copy_(X.mean(0))
        self.std.copy_(X.std(0).clamp_min(1e-6))
        return self

    def forward(self, x):
        return (x - self.mean) / self.std


def make_head(spec: HeadSpec, dim: int, n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [SignedSqrt() if spec.transform == "sqrt" else nn.Identity(), Standardize(dim)]
    if spec.kind == "mlp":
        layers.append(nn.Dropout(spec.input_dropout))
        width = dim
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = h
        layers.append(nn.Linear(width, n_classes))
    else:
        layers.append(nn.Linear(dim, n_classes))
    return nn.Sequential(*layers)


def head_from_card(card: dict) -> nn.Sequential:
    a = card["architecture"]
    spec = HeadSpec(a["head"]["kind"], tuple(a["head"].get("hidden", ())), a["head"].get("input_dropout", 0.0),
                    a["head"].get("dropout", 0.0), a["head"].get("transform", "none"))
    return make_head(spec, a["in_dim"], len(card["classes"]))


@dataclass
class TrainRequest:
    """`pipeline train`'s whole call: which head, how to train it, where it goes."""
    head: HeadSpec = field(default_factory=HeadSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Path = Path("reports/fashion-mnist")
    overwrite: bool = False
    refit: bool = True  # after early stopping: a fresh head on all training rows for the chosen epochs


def pending(out: Path, fs: FeatureSet, heads) -> list[str]:
    """The heads with no finished record (and saved model) for these features in out/results.json."""
    from pipeline.classify import read_results
    from pipeline.models import has_model

    done = {r["classifier"] for r in read_results(out) if r["feature_set"] == fs.name
            and r.get("features_fingerprint") == fs.fingerprint and has_model(out, fs.name, r["classifier"])}
    return [h for h in heads if h not in done]


def train_head(fs: FeatureSet, req: TrainRequest, progress: bool | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Train one head on `fs` and write its record, learning curve and model under `req.out` (locked)."""
    req.head.check()
    req.train.check()
    with folder_lock(req.out, "pipeline train"):
        from pipeline.classify import _check_results_file

        _check_results_file(req.out, fs)
        return _train_head(fs, req, progress, log)


def _train_head(fs: FeatureSet, req: TrainRequest, progress, log) -> dict:
    from dataclasses import replace

    from pipeline.classify import scores
    from pipeline.compute import resolve_device
    from pipeline.engines import device_name
    from pipeline.models import about_features, record_stem

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
    lr = AUTO_LR[spec.kind] if cfg.lr == "auto" else float(cfg.lr)
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
    rec = {
        "feature_set": fs.name, "classifier": spec.kind, "label": LABELS[spec.kind],
        "best_params": {**spec.describe(), "lr": lr, "lr_schedule": cfg.lr_schedule, "batch_size": bs,
                        "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
                        "refit": req.refit},
        "cv_mean": chosen.val_accuracy, "cv_std": 0.0, "cv_folds": 1,
        "validation": f"stratified holdout: {cfg.val_fraction:.0%} of the training split ({len(va):,} rows)",
        "tune_rows": len(tr), "candidates": 1, "fit_seconds": round(time.perf_counter() - started, 2),
        "predict_seconds": 0.0, "search_seconds": 0.0, "backend": "torch", "device": str(device),
        "device_name": device_name(device), "precision": precision, "n_train": len(fs.y_train),
        "n_test": len(fs.y_test), "labels_sha256": fs.labels_sha256, "dataset": fs.dataset,
        "features_fingerprint": fs.fingerprint, **_training_fields(chosen, cfg), "refit": refit,
        **scores(np.asarray(fs.y_test), pred, fs.classes),
    }
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
    that reruns from it and rewrites the same outputs)."""
    from pipeline.classify import write_results
    from pipeline.figures import learning_curve
    from pipeline.models import curve_path, save_torch_model

    rec["model"] = save_torch_model(out, rec, model, architecture, about)
    write_results(out, [rec])
    learning_curve(rec, Path(out) / curve_path(rec))
    for path in (ckpt, *extra):
        path.unlink(missing_ok=True)
