"""The torch networks behind trained heads: power normalisation and standardisation kept in the model, the
linear or MLP head a `HeadSpec` describes, rebuilt from a card, and a saved head as a scikit-learn-like
classifier."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pipeline.models.heads import HeadSpec


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


class TorchHead:
    """A saved head as a scikit-learn-like classifier on numpy features (predict, predict_proba, classes_)."""

    def __init__(self, model, n_classes: int):
        self.model, self.classes_ = model.eval(), np.arange(n_classes)

    def predict_proba(self, X):
        with torch.no_grad():
            return torch.softmax(self.model(torch.as_tensor(np.asarray(X, dtype=np.float32))), 1).numpy()

    def predict(self, X):
        return self.predict_proba(X).argmax(1)
