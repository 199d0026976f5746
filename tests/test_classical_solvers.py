"""DenseLinearSVC: scikit-learn's estimator conventions, and LinearSVC(dual=False)'s optimum."""
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline.classical.solvers import ArrayKNN, ArrayQDA, ArraySVC, DenseLinearSVC


@parametrize_with_checks([DenseLinearSVC(), ArrayQDA(reg_param=0.1), ArrayKNN(), ArraySVC(),
                          ArraySVC(precompute=True)])  # reg: the checks' data is collinear
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _objective(coef, intercept, X, y, classes, C):
    W, b = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    positive = classes[None] if len(classes) > 2 else classes[None, 1:]  # two classes: one problem
    Y = np.where(y[:, None] == positive, 1.0, -1.0)
    z = X @ W.T + b
    return 0.5 * ((W ** 2).sum() + (b ** 2).sum()) + C * (np.maximum(0, 1 - Y * z) ** 2).sum()


@pytest.mark.parametrize("n_classes", [2, 4])
def test_same_optimum_as_liblinear(n_classes):
    """The same model LinearSVC(dual=False) fits: its weights, intercepts and predictions, at an objective
    no higher than liblinear's, for one-vs-rest and for the single problem of two classes."""
    from sklearn.datasets import make_classification

    X, y = make_classification(800, 30, n_informative=10, n_classes=n_classes, n_clusters_per_class=1,
                               random_state=0)
    labels = np.array(["boot", "coat", "dress", "shirt"])[y]  # any labels, as LinearSVC takes them
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    ref = LinearSVC(C=0.05, dual=False, tol=1e-8, max_iter=10000).fit(X, labels)
    ours = DenseLinearSVC(C=0.05, tol=1e-6).fit(X, labels)
    assert ours.coef_.shape == ref.coef_.shape == ((1 if n_classes == 2 else n_classes), 30)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=2e-3)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=2e-3)
    assert list(ours.classes_) == list(ref.classes_)
    assert (ours.predict(X) == ref.predict(X)).mean() >= 0.995
    f_ours, f_ref = (_objective(m.coef_, m.intercept_, X.astype(np.float64), labels, m.classes_, 0.05)
                     for m in (ours, ref))
    assert f_ours <= f_ref * (1 + 1e-5)


def test_tolerance_and_max_iter():
    """A looser tol stops sooner at a higher objective; too few iterations warn, as scikit-learn's solvers do."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 20)).astype(np.float32)
    y = (X[:, :3].sum(1) + 0.5 * rng.normal(size=500) > 0).astype(int) + (X[:, 3] > 1)
    loose, tight = DenseLinearSVC(C=1.0, tol=1e-2).fit(X, y), DenseLinearSVC(C=1.0, tol=1e-6).fit(X, y)
    assert loose.n_iter_ < tight.n_iter_
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        DenseLinearSVC(C=1.0, tol=1e-8, max_iter=2).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        DenseLinearSVC(C=1.0, tol=1e-3).fit(X, y)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_rbf_svc_predict_is_libsvms_vote(n_classes):
    """The same predictions as SVC.predict (libsvm's one-vs-one vote), for any class labels and chunking."""
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC

    from pipeline.classical.solvers import rbf_svc_predict

    X, y = make_classification(400, 20, n_informative=10, n_classes=n_classes, random_state=n_classes)
    names = np.array(["shirt", "bag", "coat", "boot", "dress"])[y]  # not in sorted order
    for C, gamma in ((0.1, "scale"), (10.0, "scale"), (1.0, 0.3)):
        svc = SVC(C=C, gamma=gamma).fit(X[:300], names[:300])
        assert np.array_equal(rbf_svc_predict(svc, X[300:], chunk=7), svc.predict(X[300:])), (C, gamma)


@pytest.mark.parametrize("reg_param", [0.0, 0.3])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_array_qda_is_scikit_learns_qda_on_numpy_and_on_torch_tensors(reg_param, n_classes):
    """The same model as QuadraticDiscriminantAnalysis(reg_param): on numpy (float64) and on torch CPU tensors
    (float64) the same predictions, and scores and probabilities within 1e-8; fitted arrays stay where the
    input was."""
    import torch
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    rng = np.random.default_rng(n_classes)
    centres = rng.normal(size=(n_classes, 12)) * 1.5
    y = np.arange(600) % n_classes
    X = centres[y] + rng.normal(size=(600, 12)) * rng.uniform(0.5, 2, size=(n_classes, 12))[y]
    Xt = centres[np.arange(300) % n_classes] + rng.normal(size=(300, 12))
    ref = QuadraticDiscriminantAnalysis(reg_param=reg_param).fit(X, y)
    on_numpy = ArrayQDA(reg_param=reg_param).fit(X, y)
    on_torch = ArrayQDA(reg_param=reg_param).fit(torch.as_tensor(X), torch.as_tensor(y))
    assert isinstance(on_numpy.means_, np.ndarray) and isinstance(on_torch.means_, torch.Tensor)
    for qda, take in ((on_numpy, lambda a: a), (on_torch, lambda a: torch.as_tensor(a))):
        np.testing.assert_array_equal(np.asarray(qda.predict(take(Xt))), ref.predict(Xt))
        np.testing.assert_allclose(np.asarray(qda.decision_function(take(Xt))), ref.decision_function(Xt),
                                   rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(qda.predict_proba(take(Xt))), ref.predict_proba(Xt), atol=1e-8)
    with pytest.raises(np.linalg.LinAlgError, match="not full rank"):  # as scikit-learn refuses it
        ArrayQDA().fit(np.c_[X, X[:, :1]], y)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_array_knn_is_scikit_learns_knn_on_numpy_and_on_torch_tensors(weights, k):
    """KNeighborsClassifier's predictions and probabilities (Euclidean, brute force): the same predictions on
    numpy and on torch CPU tensors (float64), probabilities within 1e-6, in chunks smaller than the queries;
    queries that are training rows (distance 0) take the whole vote, as in scikit-learn."""
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(k)
    X, y = rng.normal(size=(800, 16)), rng.integers(0, 6, 800)
    Xt = np.r_[rng.normal(size=(200, 16)), X[:50]]  # the last 50 are training rows
    ref = KNeighborsClassifier(k, weights=weights).fit(X, y)
    on_numpy = ArrayKNN(k, weights=weights, chunk=64).fit(X, y)
    on_torch = ArrayKNN(k, weights=weights, chunk=64).fit(torch.as_tensor(X), torch.as_tensor(y))
    assert isinstance(on_numpy.fit_X_, np.ndarray) and isinstance(on_torch.fit_X_, torch.Tensor)
    for knn, take in ((on_numpy, lambda a: a), (on_torch, lambda a: torch.as_tensor(a))):
        np.testing.assert_array_equal(np.asarray(knn.predict(take(Xt))), ref.predict(Xt))
        np.testing.assert_allclose(np.asarray(knn.predict_proba(take(Xt))), ref.predict_proba(Xt), atol=1e-6)


def test_dense_linear_svc_on_torch_tensors_is_the_same_solve():
    """On torch tensors the objective's products run on the tensors' device and scipy's L-BFGS steps the same
    weights: the same iterations, coefficients within 1e-5, fitted tensors where the rows are, the same
    predictions."""
    import sklearn
    import torch

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 1500)
    X = (rng.normal(size=(1500, 30)) + 2 * np.eye(5, 30)[y]).astype(np.float32)
    ref = DenseLinearSVC(C=0.1).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        svc = DenseLinearSVC(C=0.1).fit(torch.as_tensor(X), torch.as_tensor(y))
        pred = svc.predict(torch.as_tensor(X))
    assert isinstance(svc.coef_, torch.Tensor) and svc.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(svc.coef_.numpy(), ref.coef_, atol=1e-5)
    np.testing.assert_allclose(svc.intercept_.numpy(), ref.intercept_, atol=1e-5)
    np.testing.assert_array_equal(pred.numpy(), ref.predict(X))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("precompute", [False, True])
def test_array_svc_is_libsvms_model_and_vote_on_numpy_and_on_torch_tensors(n_classes, precompute):
    """ArraySVC fits libsvm's model and predicts as SVC.predict does, on numpy and on torch CPU tensors, for any
    labels, gammas and chunking. Where libsvm computes the kernel itself: the same support vectors, dual
    coefficients and intercepts within 1e-10. Handed the kernel computed where the rows are (its last bits
    differ from libsvm's own sums), libsvm may take a step more or fewer: here the same support vectors,
    coefficients within 5e-3 (its stopping tolerance is 1e-3) and the same predictions. Fitted on tensors,
    its support vectors stay tensors on their device and its label names the host that ran libsvm."""
    import torch
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC

    from pipeline.classical.backends import executed_on

    X, y = make_classification(400, 20, n_informative=10, n_classes=n_classes, random_state=n_classes)
    names = np.array(["shirt", "bag", "coat", "boot", "dress"])[y]  # not in sorted order
    for C, gamma in ((0.1, "scale"), (10.0, "scale"), (1.0, 0.03), (1.0, "auto")):
        ref = SVC(C=C, gamma=gamma).fit(X[:300], names[:300])
        for data, take in ((X, lambda a: a), (torch.as_tensor(X), torch.as_tensor)):
            svc = ArraySVC(C=C, gamma=gamma, precompute=precompute, chunk=7).fit(data[:300], names[:300])
            assert svc.precompute_ is precompute
            np.testing.assert_array_equal(svc.support_, ref.support_)
            np.testing.assert_allclose(svc.dual_coef_, ref.dual_coef_, atol=5e-3 if precompute else 1e-10)
            np.testing.assert_allclose(svc.intercept_, ref.intercept_, atol=5e-3 if precompute else 1e-10)
            np.testing.assert_array_equal(svc.predict(take(X[300:])), ref.predict(X[300:]))
            on_torch = isinstance(data, torch.Tensor)
            assert isinstance(svc.support_vectors_, torch.Tensor) is on_torch
            assert executed_on(svc) == (("sklearn-array-api-cpu + sklearn-cpu", "cpu") if on_torch
                                        else ("sklearn-cpu", "cpu"))
        codes = ArraySVC(C=C, gamma=gamma).fit(torch.as_tensor(X[:300]), torch.as_tensor(y[:300]))
        pred = codes.predict(torch.as_tensor(X[300:]))  # numeric labels stay on the rows' device
        assert isinstance(pred, torch.Tensor)
        np.testing.assert_array_equal(pred.numpy(), SVC(C=C, gamma=gamma).fit(X[:300], y[:300]).predict(X[300:]))


def test_array_svc_precomputes_the_kernel_only_on_a_gpu_with_room_for_it(monkeypatch):
    """precompute="auto" is resolved in fit: never for rows on the CPU (there the kernel's products cost more
    than libsvm saves), and on a CUDA device only where the n x n float64 kernel takes at most a third of
    the host's available memory."""
    import torch

    from pipeline import hardware

    X, y = np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 3
    assert ArraySVC().fit(X, y).precompute_ is False
    assert ArraySVC().fit(torch.as_tensor(X), torch.as_tensor(y)).precompute_ is False
    svc = ArraySVC()
    cuda = type("Rows", (), {"device": torch.device("cuda:0"), "__len__": lambda self: 60_000})()
    monkeypatch.setattr(hardware, "available_memory", lambda: 120 * 2 ** 30)
    assert svc._resolve_precompute(cuda) is True  # 60,000 rows: a 27 GiB kernel of 120 GiB available
    monkeypatch.setattr(hardware, "available_memory", lambda: 64 * 2 ** 30)
    assert svc._resolve_precompute(cuda) is False
    monkeypatch.setattr(hardware, "available_memory", lambda: None)
    assert svc._resolve_precompute(cuda) is False


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_array_svc_on_cuda_tensors_is_the_cpu_model():
    """On CUDA tensors ArraySVC precomputes the kernel on the GPU (auto), fits libsvm on the host, keeps its
    support vectors on the GPU and predicts there: libsvm's model as on the CPU, up to the kernel's last bits
    (support vectors and predictions all but alike)."""
    import torch
    from sklearn.datasets import make_classification

    from pipeline.classical.backends import executed_on

    X, y = make_classification(3000, 40, n_informative=20, n_classes=10, n_clusters_per_class=1, random_state=0)
    cpu = ArraySVC(C=10).fit(X[:2000], y[:2000])
    gpu = ArraySVC(C=10).fit(torch.as_tensor(X[:2000], device="cuda"), torch.as_tensor(y[:2000], device="cuda"))
    assert gpu.precompute_ is True and cpu.precompute_ is False
    assert gpu.support_vectors_.device.type == "cuda"
    assert len(np.intersect1d(gpu.support_, cpu.support_)) >= 0.99 * max(len(gpu.support_), len(cpu.support_))
    pred = gpu.predict(torch.as_tensor(X[2000:], device="cuda"))
    assert pred.device.type == "cuda"
    assert (pred.cpu().numpy() == cpu.predict(X[2000:])).mean() >= 0.999
    assert executed_on(gpu) == ("sklearn-array-api-cuda + sklearn-cpu", "cuda:0 + cpu")


def test_sklearn_internals_check_names_the_one_that_changed(monkeypatch):
    """Every scikit-learn private name the project uses (pipeline.sklearn_internals) is there in the installed
    scikit-learn; one that an upgrade removed is one line naming it, the version installed and the one the
    use was written for: a private import, or a fitted SVC's private attribute."""
    import re

    import sklearn
    import sklearn.linear_model._base
    from sklearn.svm import SVC

    from pipeline.sklearn_internals import WRITTEN_FOR, SklearnInternalsChanged, check

    check()
    installed = ".".join(sklearn.__version__.split(".")[:2])
    with monkeypatch.context() as m:
        m.delattr(sklearn.linear_model._base, "LinearClassifierMixin")
        with pytest.raises(SklearnInternalsChanged, match=re.escape(
                f"scikit-learn {installed} changed sklearn.linear_model._base.LinearClassifierMixin, written for "
                f"{WRITTEN_FOR}; it is used by DenseLinearSVC's base class")):
            check()
    real_fit = SVC.fit

    def fit_without_gamma(self, *args, **kwargs):
        real_fit(self, *args, **kwargs)
        del self._gamma
        return self

    monkeypatch.setattr(SVC, "fit", fit_without_gamma)
    with pytest.raises(SklearnInternalsChanged, match=re.escape(
            f"scikit-learn {installed} changed sklearn.svm.SVC's fitted _gamma, written for {WRITTEN_FOR}")):
        check()
