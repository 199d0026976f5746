"""Stand-in `cuml.accel` with the real one's import order and public API (cuML 26.10): importing it imports
scikit-learn (the real estimator-proxy module starts with `import sklearn`); `install()` swaps scikit-learn's
estimators for proxies; `enabled()` and `is_proxy()` answer as documented. The proxies "fit on the GPU" by
setting `_gpu` as the real ones do: LogisticRegression always, SVC only for two classes (the real SVC proxy
falls back to the CPU for more)."""
import numpy as np
import sklearn  # noqa: F401 - the import order under test

_enabled = False
_proxies: set[type] = set()


def _proxy(base: type, on_gpu) -> type:
    def fit(self, X, y, *args, **kwargs):
        base.fit(self, X, y, *args, **kwargs)
        self._gpu = object() if on_gpu(np.asarray(y)) else None
        return self

    cls = type(base.__name__, (base,), {"fit": fit, "__module__": base.__module__, "__qualname__": base.__qualname__})
    _proxies.add(cls)
    return cls


def install(disable_uvm: bool = False, log_level=None) -> None:
    global _enabled
    import sklearn.linear_model
    import sklearn.svm

    sklearn.linear_model.LogisticRegression = _proxy(sklearn.linear_model.LogisticRegression, lambda y: True)
    sklearn.svm.SVC = _proxy(sklearn.svm.SVC, lambda y: len(np.unique(y)) <= 2)
    _enabled = True


def enabled() -> bool:
    return _enabled


def is_proxy(obj) -> bool:
    return (obj if isinstance(obj, type) else type(obj)) in _proxies
