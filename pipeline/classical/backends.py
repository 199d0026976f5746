"""Where classical ML runs, chosen once from `--device` and passed down. Knows nothing of the estimators.

A backend is a small class with a name, built by one factory, `make_backend(device)`:

- `sklearn-cpu`: scikit-learn on numpy arrays.
- `sklearn-array-api-<device>`: scikit-learn's Array API dispatch on torch tensors (CUDA, or CPU tensors in
  tests), for the classifiers that have an array-API formulation (the classifier spec says which); the rest
  stay on numpy.
- `cuml`: cuML's `cuml.accel`, installed before scikit-learn is imported, so that every scikit-learn
  estimator that cuML covers runs on the GPU, and the rest (or unsupported parameters) fall back to the CPU.

What a record calls its backend is never the backend's name: `executed_on(fitted_estimator)` reads it,
step by step, from the fitted object (torch tensors in its fitted attributes, a cuml.accel proxy that did
or did not fit on the GPU, or plain numpy). An estimator whose solver ran on the host while its fitted arrays
are on a device (`ArraySVC`: libsvm) says so with a fitted `fit_on_host_`, and its label names both.
"""
from __future__ import annotations

import contextlib
import os
import sys

from pipeline.console import stderr
from pipeline.errors import PipelineError
from pipeline.hardware import importable, resolve_device

CPU = "sklearn-cpu"


class SklearnCPU:
    """scikit-learn on numpy arrays, fits in parallel processes."""
    name = CPU
    array_api = False  # whether classifiers with an array-API formulation should use it
    cuml = False  # whether cuML's own t-SNE / UMAP may draw the maps
    device = "cpu"
    # whether the classifiers that run on the host (no array-API formulation) run at the same time as the
    # others, which then run on a device and leave the host's cores free
    overlap_host = False

    def context(self):
        return contextlib.nullcontext()

    def asarray(self, X):
        return X

    @staticmethod
    def tonumpy(y):
        if hasattr(y, "detach"):
            return y.detach().cpu().numpy()
        if hasattr(y, "get"):  # cupy
            return y.get()
        return y

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "overlap_host": self.overlap_host}


class ArrayAPI(SklearnCPU):
    """scikit-learn's Array API dispatch on torch tensors on `device` (cuda, or cpu as the tests use it)."""
    array_api = True

    def __init__(self, device: str = "cuda", overlap_host: bool | None = None):
        _require_scipy_array_api()
        self.device = device
        self.name = f"sklearn-array-api-{device.split(':')[0]}"
        # None: where the device is not the host's (on CPU tensors both would share the same cores)
        self.overlap_host = device != "cpu" if overlap_host is None else overlap_host

    def context(self):
        import sklearn

        return sklearn.config_context(array_api_dispatch=True)

    def asarray(self, X):
        import numpy as np
        import torch

        if isinstance(X, torch.Tensor):  # already converted (once per classifier, not per fit)
            return X
        X = np.asarray(X)
        return torch.as_tensor(X if X.flags.writeable else X.copy(), device=self.device)


class CumlAccel(SklearnCPU):
    """cuML's zero-code-change accelerator: scikit-learn estimators become proxies that fit on the GPU where
    cuML supports them (estimator and parameters) and on the CPU otherwise. `cuml.accel.install()` must run
    before scikit-learn is imported (cuML's documented API, as of cuML 26.10), which is why the CLI builds
    the backend first. Importing `cuml.accel` itself imports scikit-learn, so whether scikit-learn came
    first is read before that import."""
    name = "cuml"
    cuml = True

    def __init__(self, device: str = "cuda"):
        sklearn_first = "sklearn" in sys.modules  # decided before `import cuml.accel` imports it
        import cuml.accel

        if not cuml.accel.enabled():  # already on under `python -m cuml.accel` or CUML_ACCEL_ENABLED=1
            if sklearn_first:
                raise PipelineError("cuML is installed but scikit-learn was imported before cuml.accel could "
                                    "hook it; build the backend first (as the CLI does) or run under "
                                    "`python -m cuml.accel`")
            cuml.accel.install()
        self.device = device


def _cuml_accel_module():
    """cuml.accel if this process imported it (only CumlAccel, or the user, does), else None."""
    return sys.modules.get("cuml.accel")


def accel_active() -> bool:
    """Whether cuml.accel is installed in this process, so that scikit-learn's estimators are its proxies."""
    accel = _cuml_accel_module()
    return accel is not None and bool(accel.enabled())


Backend = SklearnCPU  # the type every backend satisfies


def make_backend(device: str = "auto", array_api: bool | None = None, cuml: bool | None = None):
    """auto: CUDA if torch sees one (cuML if installed, else array-API), else scikit-learn on the CPU.

    `array_api=True` forces array-API dispatch even on the CPU (torch CPU tensors), as the tests do;
    `cuml=False` skips cuML where it is installed.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        # cuml.accel works on the current device; on another card than the first, the array-API path runs
        if cuml is not False and importable("cuml") and (dev.index or 0) == 0:
            try:
                return CumlAccel(str(dev))
            except PipelineError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken cuML install (driver, rmm) must not stop the run
                stderr(f"cuML is installed but could not start ({type(e).__name__}: {str(e)[:120]}); "
                       f"using scikit-learn's Array API on the GPU instead")
        return ArrayAPI(str(dev))
    if array_api:
        return ArrayAPI("cpu")
    return SklearnCPU()


STATELESS = "where its input was"  # a step with no fitted arrays (a FunctionTransformer): nothing to read


def executed_on(estimator) -> tuple[str, str]:
    """(backend, device) a fitted estimator actually ran on, over every step of a Pipeline: the distinct
    ones in step order joined by " + " ("sklearn-array-api-cuda + sklearn-cpu" for GPU PCA then CPU QDA),
    so a label never reads the final step only. Each step's is `steps_ran_on`'s."""
    ran = [r for r in steps_ran_on(estimator).values() if r != (STATELESS, STATELESS)] or [(CPU, "cpu")]
    return tuple(" + ".join(dict.fromkeys(part for r in ran for part in r[i].split(" + "))) for i in (0, 1))


def steps_ran_on(estimator) -> dict[str, tuple[str, str]]:
    """Each step of a fitted Pipeline (or the one estimator, by its class name) -> (backend, device), read from
    the fitted object: a cuml.accel proxy knows whether it fitted on the GPU, array-API estimators hold their
    fitted arrays where they computed them, numpy arrays are scikit-learn on the CPU, and a step with no
    fitted arrays ran wherever its input was (STATELESS)."""
    steps = estimator.steps if hasattr(estimator, "steps") else [(type(estimator).__name__.lower(), estimator)]
    return {name: _step_ran_on(step) for name, step in steps if step is not None and step != "passthrough"}


def _step_ran_on(est) -> tuple[str, str]:
    """(backend, device) one fitted step ran on: where its fitted arrays are, and the host as well where its
    solver ran there."""
    backend, device = _fitted_arrays_on(est)
    if vars(est).get("fit_on_host_") and backend != CPU:  # its arrays on a device, its solver on the host
        return f"{backend} + {CPU}", device if device == "cpu" else f"{device} + cpu"  # (ArraySVC's libsvm)
    return backend, device


def _fitted_arrays_on(est) -> tuple[str, str]:
    """(backend, device) a fitted step's arrays are on (a cuml.accel proxy's: where it fitted); its first
    sub-estimator's for an ensemble; STATELESS where it has none."""
    accel = _cuml_accel_module()
    if accel is not None and accel.is_proxy(est):  # cuML says where a fit ran only in its profiler's report;
        # its proxies hold the GPU model in `_gpu` after a GPU fit (cuML 26.10), None after a CPU fallback
        return ("cuml", "cuda") if vars(est).get("_gpu") is not None else (f"{CPU} (cuml.accel fallback)", "cpu")
    numpy = False
    for name, value in vars(est).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        kind = type(value).__module__.split(".")[0]
        if kind == "torch":
            return f"sklearn-array-api-{value.device.type}", str(value.device)
        if kind == "cupy":
            return "sklearn-array-api-cuda", f"cuda:{value.device.id}"
        if isinstance(value, list) and value and hasattr(value[0], "fit"):  # sub-estimators: a forest, one-vs-rest
            inner = _step_ran_on(value[0])
            if inner != (STATELESS, STATELESS):
                return inner
        numpy |= kind == "numpy"
    return (CPU, "cpu") if numpy else (STATELESS, STATELESS)


def _require_scipy_array_api():
    if os.environ.get("SCIPY_ARRAY_API") != "1":
        if "scipy" in sys.modules:
            raise PipelineError("array-API dispatch needs SCIPY_ARRAY_API=1 set before scipy is imported; "
                                "export SCIPY_ARRAY_API=1 and run again")
        os.environ["SCIPY_ARRAY_API"] = "1"
