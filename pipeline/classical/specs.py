"""The classical classifiers: each one's scikit-learn pipeline, its grids per preset, and how the search
may cheapen or speed it (`ClassifierSpec`); the presets and their tuning rows. The CLI's choice lists and
defaults are read here. Why each pipeline looks as it does: docs/decisions.md.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.classical.backends import Backend, SklearnCPU, accel_active
from pipeline.errors import PipelineError

PRESETS = ("quick", "default", "full")
TUNE_ROWS = {"quick": 2000, "default": 10000, "full": None}  # rows the grid search sees (None: all)
DEFAULT_GRID, DEFAULT_CV = "default", 3


@dataclass
class ClassifierSpec:
    """A classifier: `make(native)` builds its unfitted Pipeline, `grids[preset]` its search space.

    `array_api_grids` is set for classifiers with an array-API formulation (runs on torch tensors, on the
    GPU with --device cuda): `make(True)` builds that formulation and these grids are valid for it."""
    name: str
    label: str
    make: Callable  # (native: bool) -> unfitted sklearn Pipeline
    grids: dict  # preset -> param grid (dict of lists)
    array_api_grids: dict | None = None  # preset -> grid for make(True); None: no array-API formulation
    # set in the search's fits only, under the candidate's own values: a cheaper fit that ranks the
    # candidates the same (fewer trees, a looser tolerance); the refit on all rows uses the pipeline's own
    search_params: dict = field(default_factory=dict)
    # the refit on all rows on n cores where the estimator alone would use fewer:
    # (pipeline, n, training rows) -> pipeline
    refit_on: Callable | None = None
    # (fitted pipeline, X) -> the pipeline's own predictions, computed faster than its predict (numpy only)
    fast_predict: Callable | None = None
    # the refit runs on one core and releases the GIL: the refits of several feature sets run at once (and
    # the search's fits of its array-API formulation, whose solver is on the host, run on threads)
    one_core_refit: bool = False
    # (unfitted pipeline, training rows, backend's device) -> bytes one refit holds beyond its rows
    refit_bytes: Callable | None = None

    def native(self, backend: Backend, custom: bool = False) -> bool:
        """Whether this classifier runs in the backend's array-API formulation. A custom grid (--grid FILE)
        was written for the scikit-learn formulation: it gets the array-API one only where that is the same
        estimator with the same grids (logistic regression), never a different one (SVD LDA)."""
        if custom and self.array_api_grids is not self.grids:
            return False
        return backend.array_api and self.array_api_grids is not None

    def grid(self, preset: str, backend: Backend) -> dict:
        return (self.array_api_grids if self.native(backend) else self.grids)[preset]


def _pipeline(*steps):
    from sklearn.pipeline import Pipeline

    return Pipeline(list(steps))


def _scale_step():
    from sklearn.preprocessing import StandardScaler

    return ("scale", StandardScaler())


def _pca_step(n=50):
    from sklearn.decomposition import PCA

    return ("pca", PCA(n_components=n, random_state=0))


def _make_lda(native: bool = False):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA

    if native:  # only solver="svd" dispatches on the Array API; it takes no shrinkage
        return _pipeline(("clf", LDA(solver="svd")))
    return _pipeline(("clf", LDA(solver="lsqr", shrinkage="auto")))


def _make_qda(native: bool = False):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis as QDA

    from pipeline.classical.solvers import ArrayQDA

    # PCA and regularised covariances, no standardisation (docs/decisions.md#qda-no-scaling); on the Array API
    # the same model computed in torch, since scikit-learn's QDA has no Array API path
    return _pipeline(_pca_step(60), ("clf", (ArrayQDA if native else QDA)(reg_param=0.3)))


def _make_logreg(native: bool = False):
    from sklearn.linear_model import LogisticRegression

    # tol 1e-3, not scikit-learn's 1e-4 (docs/decisions.md#logreg-tolerance)
    return _pipeline(_scale_step(), ("clf", LogisticRegression(C=0.1, max_iter=1000, tol=1e-3)))


def _make_linsvc(native: bool = False):
    from sklearn.svm import LinearSVC

    from pipeline.classical.solvers import DenseLinearSVC

    if accel_active():  # scikit-learn's LinearSVC is cuML's, on the GPU
        return _pipeline(_scale_step(), ("clf", LinearSVC(C=0.01, dual=False, tol=1e-2, max_iter=2000)))
    # LinearSVC(dual=False)'s model and objective by L-BFGS on dense BLAS (docs/decisions.md#linear-svc-lbfgs)
    return _pipeline(_scale_step(), ("clf", DenseLinearSVC(C=0.01, tol=3e-4, max_iter=2000)))


def _rf_on_cores(est, n: int, X):
    return est.set_params(clf__n_jobs=n)  # pinned to 1 in the search, whose folds run in parallel


def _make_rf(native: bool = False):
    from sklearn.ensemble import RandomForestClassifier

    # 200 full-depth trees: smaller forests were measured and not adopted (docs/decisions.md#forest-not-smaller)
    return _pipeline(("clf", RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=0)))


def _make_svc(native: bool = False):
    from sklearn.svm import SVC

    from pipeline.classical.solvers import ArraySVC

    # on the Array API: libsvm's model, fitted on the host from the kernel computed where the rows are (on a
    # GPU), its vote computed there (ArraySVC); scaling and PCA on the backend's device
    return _pipeline(_scale_step(), _pca_step(100),
                     ("clf", (ArraySVC if native else SVC)(C=10, gamma="scale", cache_size=1000)))


def _svc_refit_bytes(est, rows: int, device: str) -> int:
    """Memory one RBF SVC refit holds beyond its rows: libsvm's kernel cache, and the whole n x n float64
    kernel where ArraySVC will precompute it (`ArraySVC.held_bytes`)."""
    clf = est[-1]
    return clf.held_bytes(rows, device) if hasattr(clf, "held_bytes") else int(clf.cache_size * 2 ** 20)


def _svc_predict_by_blas(est, X):
    from sklearn.svm import SVC

    from pipeline.classical.solvers import rbf_svc_predict

    clf = est[-1]
    if type(clf) is not SVC or clf.kernel != "rbf" or accel_active():  # cuML's SVC predicts on the GPU
        return est.predict(X)
    # the same votes as libsvm's predict, by dense BLAS on every core (docs/decisions.md#rbf-svc-blas)
    return rbf_svc_predict(clf, est[:-1].transform(X))


def _make_knn(native: bool = False):
    from sklearn.neighbors import KNeighborsClassifier

    from pipeline.classical.solvers import ArrayKNN

    # on the Array API: the same vote by matrix products and top-k in torch (scikit-learn's has no such path)
    return _pipeline(_scale_step(), _pca_step(50),
                     ("clf", (ArrayKNN if native else KNeighborsClassifier)(n_neighbors=5, weights="distance")))


_QDA_GRIDS = {"quick": {}, "default": {"pca__n_components": [40, 80], "clf__reg_param": [0.1, 0.3]},
              "full": {"pca__n_components": [20, 40, 60, 80, 120], "clf__reg_param": [0.0, 0.01, 0.1, 0.2, 0.3, 0.5]}}
_KNN_GRIDS = {  # PCA-50 and PCA-100 both searched (docs/decisions.md#knn-pca)
    "quick": {}, "default": {"clf__n_neighbors": [5, 10], "pca__n_components": [50, 100]},
    "full": {"pca__n_components": [30, 50, 100], "clf__n_neighbors": [1, 3, 5, 7, 10, 15, 20],
             "clf__weights": ["uniform", "distance"]}}
_LINSVC_GRIDS = {"quick": {}, "default": {"clf__C": [3e-4, 1e-3, 3e-3]},
                 # C >= 0.3 does not converge within max_iter on standardised pixels (and costs minutes per fit)
                 "full": {"clf__C": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1]}}
_LOGREG_GRIDS = {"quick": {}, "default": {"clf__C": [0.01, 0.1, 1.0]},  # lbfgs: the same on the Array API
                 "full": {"clf__C": [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}}
_SVC_GRIDS = {"quick": {}, "default": {"clf__C": [3.0, 10.0]},
              "full": {"pca__n_components": [50, 100, 200], "clf__C": [1.0, 3.0, 10.0, 30.0],
                       "clf__gamma": ["scale", 1e-3, 3e-3]}}

CLASSIFIERS = {s.name: s for s in [
    ClassifierSpec("lda", "LDA", _make_lda, {
        "quick": {}, "default": {"clf__shrinkage": ["auto", 0.01, 0.1]},
        "full": {"clf__shrinkage": ["auto", 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3]}},
        # SVD LDA has no shrinkage; its rank threshold is what regularises it on collinear raw pixels
        array_api_grids={"quick": {}, "default": {"clf__tol": [1e-4, 1e-2]},
                         "full": {"clf__tol": [1e-6, 1e-4, 1e-3, 1e-2, 1e-1]}}),
    ClassifierSpec("qda", "QDA", _make_qda, _QDA_GRIDS, array_api_grids=_QDA_GRIDS),  # ArrayQDA: the same model
    ClassifierSpec("logreg", "Logistic regression", _make_logreg, _LOGREG_GRIDS, array_api_grids=_LOGREG_GRIDS),
    # DenseLinearSVC computes its products where its input is: the same estimator on the Array API
    ClassifierSpec("linsvc", "Linear SVC", _make_linsvc, _LINSVC_GRIDS, array_api_grids=_LINSVC_GRIDS),
    ClassifierSpec("rf", "Random forest", _make_rf, {
        "quick": {"clf__n_estimators": [50]}, "default": {"clf__min_samples_leaf": [1, 2]},
        # more trees never hurt accuracy, so `full` fixes a generous 300 rather than searching the count
        "full": {"clf__n_estimators": [300], "clf__max_features": ["sqrt", "log2", 0.05, 0.1, 0.2],
                 "clf__min_samples_leaf": [1, 2, 4]}},
        # the search ranks min_samples_leaf with 100 trees; the refit grows the pipeline's 200
        search_params={"clf__n_estimators": 100}, refit_on=_rf_on_cores),
    ClassifierSpec("svc", "RBF SVC", _make_svc, _SVC_GRIDS,
        # libsvm fits on one core (its one-vs-one fit has no parallel form), releasing the GIL; ArraySVC is
        # that model on the Array API (the same estimator and grids)
        array_api_grids=_SVC_GRIDS, fast_predict=_svc_predict_by_blas, one_core_refit=True,
        refit_bytes=_svc_refit_bytes),
    ClassifierSpec("knn", "k-NN", _make_knn, _KNN_GRIDS, array_api_grids=_KNN_GRIDS),  # ArrayKNN: the same vote
]}
DEFAULT_CLASSIFIERS = tuple(CLASSIFIERS)


def grid_id(grid: str | dict) -> str:
    """A preset's name, or 'custom-<hash>' for a dict of grids."""
    if isinstance(grid, str):
        return grid
    return "custom-" + hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:12]


def check_folds(cv: int) -> None:
    """--cv: cross-validation needs two folds at least (said before anything is derived from it)."""
    if cv < 2:
        raise PipelineError(f"--cv {cv}: cross-validation needs at least 2 folds")


def load_grid(grid: str) -> str | dict:
    """--grid: a preset's name as it is, else the grids of the JSON file it names ({classifier: {param:
    [values]}}, checked against the classifiers by `check_custom_grid` and `resolve_grid`); one line if the file
    cannot be read or holds no JSON object."""
    if grid in PRESETS:
        return grid
    try:
        grids = json.loads(Path(grid).read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"--grid {grid}: not a preset ({', '.join(PRESETS)}) nor a readable "
                            f"JSON file of grids ({e})") from None
    if not isinstance(grids, dict):
        raise PipelineError(f"--grid {grid}: expected a JSON object {{classifier: {{param: [values]}}}}, "
                            f"not a {type(grids).__name__}")
    return grids


def check_custom_grid(grid: dict, classifiers) -> None:
    """A --grid FILE's keys: each a classifier being run, each parameter one its pipeline has. Anything else
    would be silently ignored (the record would say `custom-...` but the default ran): one line naming it."""
    _check_grid_classifiers(grid, classifiers)
    for c, g in grid.items():
        if isinstance(g, dict):  # else resolve_grid says what a grid must be
            _check_grid_params(c, g)


def _check_grid_classifiers(grid: dict, classifiers) -> None:
    """Every key of a custom grid is a classifier being run."""
    unused = [k for k in grid if k not in classifiers]
    if unused:
        known = [k for k in unused if k in CLASSIFIERS]
        raise PipelineError(f"--grid: grids for {', '.join(map(repr, unused))} would not be used: "
                            + (f"{', '.join(known)} not among --classifiers {','.join(classifiers)}" if known else
                               f"not classifiers (choose from {','.join(CLASSIFIERS)})"))


def _check_grid_params(c: str, g: dict) -> None:
    """Every parameter of classifier c's custom grid is one of its pipeline's."""
    pipe = CLASSIFIERS[c].make(False)
    bad = [k for k in g if k not in pipe.get_params()]
    if bad:
        example = ", ".join(CLASSIFIERS[c].grids["default"]) or "clf__tol"
        raise PipelineError(f"--grid: {c} has no parameter {', '.join(map(repr, bad))}; its pipeline's steps "
                            f"are {', '.join(pipe.named_steps)}, parameters are step__name (e.g. {example})")


def resolve_grid(classifier: str, grid: str | dict, backend: Backend | None = None) -> dict:
    """A preset name (its grid for the formulation this backend runs), or a dict {classifier: param grid}
    (e.g. read from --grid FILE.json)."""
    if isinstance(grid, str):
        if grid not in PRESETS:
            raise PipelineError(f"--grid {grid!r}: use {', '.join(PRESETS)} or a JSON file of grids")
        return CLASSIFIERS[classifier].grid(grid, backend or SklearnCPU())
    g = grid.get(classifier, {})
    if not isinstance(g, dict) or any(not isinstance(v, list) or not v for v in g.values()):
        raise PipelineError(f"grid for {classifier} leaves nothing to search (each parameter needs a "
                            f"non-empty list of values): {g}")
    return g
