"""Where classical ML runs, chosen once from `--device` and passed down: sklearn on the CPU, cuML on a
CUDA machine where it is installed, or scikit-learn's Array API dispatch on torch tensors for the estimators
that support it (the rest stay on the CPU). Knows nothing of the estimators' details.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from pipeline.errors import PipelineError

# Estimators (final pipeline step) that scikit-learn's Array API dispatch runs on torch tensors, with the
# parameters that must hold for it (checked with scikit-learn 1.9.1; LDA lsqr/eigen, LinearSVC, random forest
# raise, QDA silently converts to numpy).
ARRAY_API_OK = {"lda": {"solver": "svd"}, "logreg": {"solver": "lbfgs"}}


@dataclass
class Backend:
    name: str  # "sklearn-cpu", "cuml" or "sklearn-array-api-<device>"
    device: str = "cpu"  # where arrays live for array-API estimators ("cpu" or "cuda")

    def runs(self, classifier: str) -> str:
        """The backend that actually runs this classifier (array-API covers only some)."""
        if self.name.startswith("sklearn-array-api") and classifier not in ARRAY_API_OK:
            return "sklearn-cpu"
        return self.name

    def context(self, classifier: str):
        """Context for fitting/predicting this classifier on this backend."""
        if self.runs(classifier).startswith("sklearn-array-api"):
            import sklearn

            return sklearn.config_context(array_api_dispatch=True)
        return contextlib.nullcontext()

    def asarray(self, X, classifier: str):
        """Put X where this classifier's backend wants it (a torch tensor for array-API)."""
        if self.runs(classifier).startswith("sklearn-array-api"):
            import numpy as np
            import torch

            if isinstance(X, torch.Tensor):  # already converted (once per classifier, not per fit)
                return X
            X = np.asarray(X)
            return torch.as_tensor(X if X.flags.writeable else X.copy(), device=self.device)
        return X

    def tonumpy(self, y):
        if hasattr(y, "detach"):
            return y.detach().cpu().numpy()
        return y


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def make_backend(device: str = "auto", array_api: bool | None = None) -> Backend:
    """auto: CUDA if torch sees one (cuML if installed, else array-API), else sklearn on the CPU.

    `array_api=True` forces array-API dispatch even on the CPU (torch CPU tensors), as the tests do.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise PipelineError(f"--device {device!r}: use auto, cpu or cuda")
    cuda = False
    if device in ("auto", "cuda"):
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if device == "cuda" and not cuda:
            raise PipelineError("--device cuda: no CUDA device is visible here; use --device cpu or auto")
    if cuda:
        try:
            import cuml  # noqa: F401

            return Backend("cuml", "cuda")
        except ImportError:
            pass
        _need_scipy_array_api()
        return Backend("sklearn-array-api-cuda", "cuda")
    if array_api:
        _need_scipy_array_api()
        return Backend("sklearn-array-api-cpu", "cpu")
    return Backend("sklearn-cpu", "cpu")


def _need_scipy_array_api():
    if os.environ.get("SCIPY_ARRAY_API") != "1":
        import sys

        if "scipy" in sys.modules:
            raise PipelineError("array-API dispatch needs SCIPY_ARRAY_API=1 set before scipy is imported; "
                                "export SCIPY_ARRAY_API=1 and run again")
        os.environ["SCIPY_ARRAY_API"] = "1"
