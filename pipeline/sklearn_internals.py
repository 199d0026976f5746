"""scikit-learn's private names, the only module that uses them: each one here, with the scikit-learn version it
was written for, so that an upgrade that moves or drops one fails here, in one line naming it, not somewhere
inside a fit. `check()` touches every one (tests/test_classical_solvers.py calls it).

Nothing of scikit-learn is imported until a name is asked for (cuML's `cuml.accel` must hook scikit-learn
before it is first imported): the classes below are this module's attributes, imported on first access.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from pipeline.errors import PipelineError

WRITTEN_FOR = "1.9"  # the scikit-learn version every use below was written for (the lock has 1.9.x)


class SklearnInternalsChanged(PipelineError):
    """The installed scikit-learn lacks a private name this project was written against."""


@dataclass(frozen=True)
class _Private:
    """A private scikit-learn class or function: where it lives, what uses it, the version it was written for."""
    module: str
    name: str
    used_by: str
    written_for: str = WRITTEN_FOR

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


_IMPORTS = {p.name: p for p in (
    # DenseLinearSVC's base: decision_function, predict and the classes' order from coef_ and intercept_
    _Private("sklearn.linear_model._base", "LinearClassifierMixin", "DenseLinearSVC's base class"),
    # the solvers' _parameter_constraints, checked by BaseEstimator._validate_params
    _Private("sklearn.utils._param_validation", "Interval", "the solvers' parameter constraints"),
    _Private("sklearn.utils._param_validation", "StrOptions", "the solvers' parameter constraints"),
    # an array-API fitted estimator's torch / CuPy attributes as numpy, before skops writes it
    _Private("sklearn.utils._array_api", "_estimator_with_converted_arrays", "saving an array-API model"),
)}
# skops' name for a fitted tree's state (a random forest's), which it does not trust by default: a saved model
# holding it loads only if the name is listed (pipeline.models.saved.TRUSTED)
_TREE_STATE = _Private("sklearn.tree._tree", "Tree", "loading a saved random forest (skops' trusted types)")
TREE_STATE_TYPE = _TREE_STATE.path
# libsvm's own model in a fitted SVC (dual coefficients and intercepts not sign-flipped for two classes; gamma
# resolved from "scale"/"auto"), read by rbf_svc_predict
SVC_LIBSVM_ATTRIBUTES = ("_dual_coef_", "_intercept_", "_gamma")
_SVC_USE = "rbf_svc_predict (the RBF SVC's predictions by BLAS)"
# BaseEstimator's check of an estimator's parameters against its _parameter_constraints, called by the solvers' fit
_VALIDATE_PARAMS = _Private("sklearn.base", "BaseEstimator._validate_params", "the solvers' fit")


def changed(internal: str, used_by: str, written_for: str = WRITTEN_FOR) -> SklearnInternalsChanged:
    """The one line an absent internal raises: the installed version, the internal, what it is used for."""
    import sklearn

    installed = ".".join(sklearn.__version__.split(".")[:2])
    return SklearnInternalsChanged(
        f"scikit-learn {installed} changed {internal}, written for {written_for}; it is used by {used_by}: "
        f"install scikit-learn {written_for}.x or update pipeline/sklearn_internals.py")


def _load(private: _Private):
    try:
        return getattr(importlib.import_module(private.module), private.name)
    except (ImportError, AttributeError):
        raise changed(private.path, private.used_by, private.written_for) from None


def __getattr__(name: str):
    """`from pipeline.sklearn_internals import LinearClassifierMixin` (and the others in _IMPORTS): imported
    from scikit-learn on first access, an absent one raising `changed`'s line."""
    if name not in _IMPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _load(_IMPORTS[name])


def estimator_with_converted_arrays(estimator, converter):
    """A copy of a fitted estimator with every array attribute (its steps' too) passed through `converter`
    (scikit-learn 1.9's `_estimator_with_converted_arrays`)."""
    return _load(_IMPORTS["_estimator_with_converted_arrays"])(estimator, converter)


def validate_params(estimator) -> None:
    """Checks an estimator's parameters against its `_parameter_constraints`, raising scikit-learn's own
    InvalidParameterError (scikit-learn 1.9's `BaseEstimator._validate_params`)."""
    validate = getattr(estimator, "_validate_params", None)
    if validate is None:
        raise changed(_VALIDATE_PARAMS.path, _VALIDATE_PARAMS.used_by)
    validate()


def svc_libsvm_model(svc):
    """(dual coefficients, intercepts, gamma) of a fitted `SVC` as libsvm holds them: its private
    `_dual_coef_`, `_intercept_` (not sign-flipped for two classes, unlike the public ones) and `_gamma` (the
    number "scale" or "auto" resolved to) in scikit-learn 1.9."""
    missing = [a for a in SVC_LIBSVM_ATTRIBUTES if not hasattr(svc, a)]
    if missing:
        raise changed(f"sklearn.svm.SVC's fitted {', '.join(missing)}", _SVC_USE)
    return tuple(getattr(svc, a) for a in SVC_LIBSVM_ATTRIBUTES)


def check() -> None:
    """Touches every private name above (imports each, fits a tiny SVC and reads its libsvm model), raising
    `changed`'s one line for the first one the installed scikit-learn lacks."""
    import numpy as np
    from sklearn.svm import SVC

    for private in (*_IMPORTS.values(), _TREE_STATE):
        _load(private)
    svc = SVC(kernel="rbf").fit(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), [0, 0, 1, 1])
    validate_params(svc)
    svc_libsvm_model(svc)
