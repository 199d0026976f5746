"""`ImageEmbedder`: Stage 1 as a scikit-learn transformer, for notebooks:

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import LogisticRegression
    from pipeline import ImageEmbedder
    clf = make_pipeline(ImageEmbedder("efficientnet_lite0"), LogisticRegression(max_iter=1000))
    clf.fit(train_paths, y_train).score(test_paths, y_test)

`fit` learns nothing (it builds the backbone and engine: "auto" resolved there, as scikit-learn resolves it in
fit); `transform` takes image paths, PIL images or uint8 arrays ((H, W), (H, W, C) or (C, H, W), or one
(N, H, W) / (N, C, H, W) / (N, H, W, C) array) and returns float32 (n, dim) embeddings made as `pipeline
extract` makes them: the same decoding, backbone, weights, preprocessing and engine.
"""
from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from pipeline.data.images import as_viewed, decode_image
from pipeline.embed.backbones import build_backbone
from pipeline.embed.engines import make_engine
from pipeline.embed.int8 import CALIBRATION_IMAGES, CALIBRATION_SEED, Calibration, calibration_of
from pipeline.embed.request import BACKBONE, WEIGHTS
from pipeline.errors import PipelineError


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Images -> pretrained-CNN embeddings (see the module docstring). Parameters as `pipeline extract`'s."""

    def __init__(self, backbone: str = BACKBONE, weights: str = WEIGHTS, layer: str | None = None,
                 image_size: int | None = None, device: str = "auto", precision: str = "auto", engine: str = "auto",
                 batch_size: int = 64):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.image_size = image_size
        self.device = device
        self.precision = precision
        self.engine = engine
        self.batch_size = batch_size

    def fit(self, X=None, y=None):
        """Build the backbone and its engine (no learning: embeddings do not depend on X, except that
        precision="int8" calibrates on a seeded sample of X, as `pipeline extract` does on the training split)."""
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise PipelineError(f"batch_size must be a positive number of images, not {self.batch_size!r}")
        self.backbone_ = build_backbone(self.backbone, self.weights, self.layer, self.image_size)
        self.calibration_ = None
        if self.precision == "int8":
            if X is None:
                raise PipelineError("precision='int8' calibrates on the images given to fit: pass some")
            images = _images(X)
            rows = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(
                len(images), min(CALIBRATION_IMAGES, len(images)), replace=False))
            self.calibration_ = calibration_of([images[i] for i in rows], "fit", CALIBRATION_SEED, len(images))
        self.engine_ = self._engine()
        self.engine_description_ = self.engine_.describe()  # what runs: engine, precision, device
        self.n_features_out_ = self.backbone_.dim
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        images = _images(X)
        if self.engine_ is None:  # unpickled: the engine is rebuilt, not stored (int8: from the cache)
            self.engine_ = self._engine()
        batches = (images[a:a + self.batch_size] for a in range(0, len(images), self.batch_size))
        out = [f for f in self.engine_.map(batches)]
        if not out:
            return np.empty((0, self.n_features_out_), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _engine(self):
        return make_engine(self.backbone_, self.device, self.precision, self.engine, calibration=self.calibration_)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.asarray([f"embedding{i}" for i in range(self.n_features_out_)], dtype=object)

    def __getstate__(self):
        state = self.__dict__.copy()
        if "engine_" in state:
            state["engine_"] = None  # a compiled engine (OpenVINO) is not picklable; rebuilt on first use
        if state.get("calibration_") is not None:  # the images stay behind: the int8 model is cached
            state["calibration_"] = Calibration.described(state["calibration_"].describe())
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # images, not a feature matrix
        tags.input_tags.string = True  # paths
        tags.requires_fit = True
        return tags


def _images(X) -> list[np.ndarray]:
    """Whatever a user holds as images -> a list of writable uint8 (C, H, W) arrays, C = 1 or 3."""
    if isinstance(X, np.ndarray) and X.ndim == 3 and X.shape[2] in (1, 3, 4):
        raise PipelineError(f"an array of shape {X.shape} looks like one (H, W, C) image: pass a list of images "
                            f"([image]), or an (N, H, W) / (N, C, H, W) / (N, H, W, C) array")
    if isinstance(X, np.ndarray) and X.ndim in (3, 4):  # (N, H, W) grey, as MNIST-style arrays come; or 4-D
        X = list(X)
    elif isinstance(X, np.ndarray) and X.ndim != 1:  # a feature matrix
        raise PipelineError(f"transform takes a list of images (or an (N, H, W), (N, C, H, W) or (N, H, W, C) "
                            f"array), not an array of shape {X.shape}")
    if isinstance(X, str | os.PathLike) or hasattr(X, "convert"):
        raise PipelineError("transform takes a list of images (paths, PIL images or arrays), not one image")
    return [_image(x) for x in X]


def _image(x) -> np.ndarray:
    if isinstance(x, str | os.PathLike):
        return decode_image(x)
    if hasattr(x, "convert"):  # a PIL image: decoded as a file is (orientation, transparency, 16 bits)
        return as_viewed(x)
    a = np.asarray(x)
    if a.dtype != np.uint8:
        raise PipelineError(f"an image array must be uint8 (0..255), not {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[2] in (1, 3) and a.shape[0] not in (1, 3):
        a = a.transpose(2, 0, 1)
    elif not (a.ndim == 3 and a.shape[0] in (1, 3)):
        raise PipelineError(f"an image array must be (H, W), (H, W, C) or (C, H, W) with C = 1 or 3, not {a.shape}")
    return np.ascontiguousarray(a) if a.flags.writeable else a.copy()  # torch warns on a read-only array
