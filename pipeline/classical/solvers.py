"""Hand-written solvers, where a library's is slow for the dense rows this project fits.

`DenseLinearSVC` is scikit-learn's `LinearSVC(dual=False)` model and objective, solved another way. liblinear
walks the rows as (index, value) pairs on one core, one class after another; here the ten one-vs-rest problems
are one L-BFGS problem whose every step is two dense float32 matrix products (BLAS, every core). On
Fashion-MNIST: the search's fits 6-12x, the refits on all 60,000 rows 1.8-2.9x faster than liblinear, each at
a lower objective (benchmarks/bench_linsvc.py).

`rbf_svc_predict` gives a fitted RBF `SVC`'s own predictions with its kernel as dense matrix products.

`ArrayQDA` is scikit-learn's `QuadraticDiscriminantAnalysis(reg_param, tol)` computed in torch, so that it
fits where its input is (torch CUDA tensors on a GPU backend); scikit-learn 1.9's QDA has no Array API path.
`ArrayKNN` is `KNeighborsClassifier` (Euclidean, brute force) the same way: distances by one matrix product
per chunk of queries, the k nearest by top-k, the vote weighted as scikit-learn weighs it.
`ArraySVC` is `SVC(kernel="rbf")`: libsvm fits it on the host (there is no GPU formulation of its solver here),
from a kernel computed where the rows are when that pays, and its one-vs-one vote runs where the rows are.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from pipeline.sklearn_internals import (
    Interval,
    LinearClassifierMixin,
    StrOptions,
    svc_libsvm_model,
    validate_params,
)


class DenseLinearSVC(LinearClassifierMixin, BaseEstimator):
    """A linear SVM: one-vs-rest, squared hinge loss, L2 penalty; the model `LinearSVC(dual=False)` fits.

    Minimises, for every class k at once (y_ik = +1 for rows of class k, else -1; one problem when there are
    two classes):

        sum_k  1/2 (|w_k|^2 + b_k^2)  +  C sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2

    The intercept is penalised like a weight, as liblinear does (`intercept_scaling=1`). The rows are used in
    float32 (the products' precision; the objective's sums are float64). L-BFGS stops once the gradient's norm
    has fallen by `tol` from its value at zero weights, when float32 allows no more progress, or after `max_iter`
    iterations (a ConvergenceWarning).
    `coef_`, `intercept_`, `decision_function` and `predict` are LinearSVC's.
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, C: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X, y):
        validate_params(self)
        X, y, on_torch = _linear_fit_input(self, X, y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("needs samples of at least 2 classes in the data, but the data contains only one "
                             f"class: {self.classes_[0]!r}")
        k = 1 if len(self.classes_) == 2 else len(self.classes_)
        Y, d = _one_vs_rest_signs(codes, k), X.shape[1]
        if on_torch:
            objective, last = _torch_objective(X, Y, self.C, d, k)
        else:
            objective, last = self._numpy_objective(X, Y, np.float32(self.C), d, k)
        res, stop = self._minimize(objective, last, (d + 1) * k)
        self.n_iter_ = int(res.nit)
        # res.jac: the gradient at the solution returned (not at a rejected step). Stopping short of tol because
        # float32 allows no more progress is as converged as this solver gets: no warning
        if np.linalg.norm(res.jac) > stop and self.n_iter_ >= self.max_iter:
            warnings.warn(f"L-BFGS did not reach tol={self.tol} in max_iter={self.max_iter} iterations; "
                          "raise max_iter or lower C", ConvergenceWarning, stacklevel=2)
        self.coef_ = res.x[:d * k].reshape(d, k).T.copy()
        self.intercept_ = res.x[d * k:].copy()
        if on_torch:  # fitted where the rows are, so that predictions run there and the record says so
            self.coef_ = _tensor_like(X, self.coef_)
            self.intercept_ = _tensor_like(X, self.intercept_)
        return self

    def _minimize(self, objective, last, n_weights: int):
        """scipy's L-BFGS from zero weights -> (its result, the gradient norm that counts as converged: `tol`
        times the norm at zero)."""
        from scipy.optimize import minimize

        w0 = np.zeros(n_weights)
        stop = self.tol * np.linalg.norm(objective(w0)[1])

        def converged(intermediate_result):
            if np.linalg.norm(last["grad"]) <= stop:
                raise StopIteration

        # ftol/gtol 0: only `tol` (or max_iter, or no more progress in float32) ends the solve
        res = minimize(objective, w0, jac=True, method="L-BFGS-B", callback=converged,
                       options={"maxiter": self.max_iter, "ftol": 0.0, "gtol": 0.0, "maxcor": 20})
        return res, stop

    def _numpy_objective(self, X, Y, C, d, k):
        last = {}

        def objective(w):
            W = w[:d * k].reshape(d, k).astype(np.float32)
            b = w[d * k:].astype(np.float32)
            slack = X @ W
            slack += b
            slack *= Y
            np.subtract(1, slack, out=slack)
            np.maximum(slack, 0, out=slack)
            f = 0.5 * float(w @ w) + self.C * float(np.square(slack, dtype=np.float64).sum())
            slack *= Y
            slack *= -2 * C  # d loss / d (X W + b)
            grad = np.concatenate([(X.T @ slack).ravel(), slack.sum(0)]).astype(np.float64)
            grad += w
            last["grad"] = grad
            return f, grad

        return objective, last


def _linear_fit_input(est, X, y):
    """(rows, labels, whether X was a tensor) for DenseLinearSVC: a tensor as it is (its products run on its
    device), numpy validated as float32 in C order."""
    on_torch = _is_tensor(X)
    if on_torch:  # torch tensors (the Array API backend): the products run on their device
        y = _tensor_labels(est, X, y)
    else:
        X, y = validate_data(est, X, y, dtype=np.float32, order="C")
    check_classification_targets(y)
    return X, y, on_torch


def _one_vs_rest_signs(codes: np.ndarray, k: int) -> np.ndarray:
    """y_ik (float32): +1 where row i is of class k, else -1; one column (the second class's) for two classes."""
    return (codes[:, None] == (np.arange(k) + (k == 1))[None]).astype(np.float32) * 2 - 1


def _torch_objective(X, Y, C: float, d: int, k: int):
    """DenseLinearSVC's objective and gradient with the rows as float32 torch tensors on their device: the
    same sums as the numpy one (products in float32, the loss summed in float64); scipy's L-BFGS steps the
    (d + 1) * k weights on the host, so each evaluation moves only those weights and their gradient."""
    import torch

    X = X.to(torch.float32)
    Y = torch.as_tensor(Y, device=X.device)
    last = {}

    def objective(w):
        wt = torch.as_tensor(w, dtype=torch.float32, device=X.device)
        slack = ((1 - Y * (X @ wt[:d * k].reshape(d, k) + wt[d * k:])).clamp_(min=0))
        f = 0.5 * float(w @ w) + C * float(slack.double().square().sum())
        g = slack * Y * (-2 * C)
        grad = torch.cat([(X.T @ g).ravel(), g.sum(0)]).double().cpu().numpy() + w
        last["grad"] = grad
        return f, grad

    return objective, last


def _is_tensor(X) -> bool:
    return type(X).__module__.split(".")[0] == "torch"


def _tensor_like(X, a: np.ndarray):
    """A fitted numpy array as a tensor of X's float dtype on X's device."""
    import torch

    return torch.as_tensor(a, dtype=X.dtype if X.is_floating_point() else torch.float32, device=X.device)


def rbf_svc_predict(svc, X, chunk: int = 1024) -> np.ndarray:
    """A fitted scikit-learn `SVC(kernel="rbf")`'s own predictions (libsvm's one-vs-one vote), with the
    kernel computed as dense float64 matrix products (BLAS, every core) instead of libsvm's one row and one
    support vector at a time on one core.

    For each pair of classes i < j, as libsvm: dec = sum over i's support vectors of dual_coef_[j-1] K +
    sum over j's of dual_coef_[i] K + intercept; dec > 0 is a vote for i, else for j; the most votes win, the
    lower class index on a tie. The sums differ from libsvm's by float64 rounding only. On the 10,000
    Fashion-MNIST test rows (17-18k support vectors), 2 cores: 2.4-2.6x faster than libsvm in a chunk per core,
    the same predictions (benchmarks/bench_svc_predict.py)."""
    sv = np.asarray(svc.support_vectors_, np.float64)
    dual_coef, intercept, gamma = svc_libsvm_model(svc)
    coef, b = np.asarray(dual_coef), np.asarray(intercept)  # libsvm's (not flipped for 2 classes)
    n = len(svc.classes_)
    first = np.concatenate([[0], np.cumsum(svc.n_support_)])
    sv_sq = (sv * sv).sum(1)
    out = np.empty(len(X), np.intp)
    for a in range(0, len(X), chunk):
        x = np.asarray(X[a:a + chunk], np.float64)
        d2 = (x * x).sum(1)[:, None] + sv_sq[None] - 2 * (x @ sv.T)
        K = np.exp(-gamma * np.maximum(d2, 0, out=d2))
        out[a:a + chunk] = _ovo_vote(K, coef, b, first, np.zeros((len(x), n), np.intp)).argmax(1)
    return svc.classes_[out]


def _ovo_vote(K, coef, b, first, votes):
    """libsvm's one-vs-one vote from the kernel between the rows and the support vectors (numpy or torch alike):
    `coef` and `b` libsvm's dual coefficients and intercepts, `first` where each class's support vectors start,
    `votes` zeros (rows x classes), filled and returned; its row's first maximum is the prediction."""
    n = votes.shape[1]
    # part[i][:, k]: class i's support vectors' share of the decisions with the k-th class of coef's rows
    part = [K[:, first[i]:first[i + 1]] @ coef[:, first[i]:first[i + 1]].T for i in range(n)]
    pair = 0
    for i in range(n):
        for j in range(i + 1, n):
            win = part[i][:, j - 1] + part[j][:, i] + b[pair] > 0
            votes[:, i] += win
            votes[:, j] += ~win
            pair += 1
    return votes


class ArraySVC(ClassifierMixin, BaseEstimator):
    """`SVC(kernel="rbf", C, gamma, cache_size)`'s model, fitted by libsvm on the host (one core), its
    predictions computed in torch where the input is: numpy in, the support vectors as a float64 numpy array;
    torch tensors in (CPU or CUDA), the support vectors as tensors on that device, where `predict` computes
    the kernel and libsvm's one-vs-one vote (`rbf_svc_predict`'s, the lower class on a tied vote).

    `precompute`: libsvm fits from the exact RBF kernel of the training rows, computed where they are in
    float64 and handed to it as `kernel="precomputed"` (True), or computes the kernel itself, a row at a
    time, as scikit-learn's SVC does (False). "auto", resolved in `fit` (`precompute_` says which ran): True
    for rows on a CUDA device whose n x n kernel takes at most a third of the host's available memory,
    False otherwise (on the CPU the kernel's products cost more than libsvm saves; benchmarks/bench_svc_fit.py).
    Either way the model is libsvm's: the same support vectors and dual coefficients up to the kernel's
    rounding. `dual_coef_` and `intercept_` are scikit-learn's SVC's (their sign flipped for two classes)."""

    _parameter_constraints = {"C": [Interval(Real, 0, None, closed="neither")],
                              "gamma": [StrOptions({"scale", "auto"}), Interval(Real, 0, None, closed="neither")],
                              "cache_size": [Interval(Real, 0, None, closed="neither")],
                              "precompute": ["boolean", StrOptions({"auto"})],
                              "chunk": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, C: float = 1.0, gamma="scale", cache_size: float = 200, precompute="auto",
                 chunk: int = 1024):
        self.C = C
        self.gamma = gamma
        self.cache_size = cache_size
        self.precompute = precompute
        self.chunk = chunk

    def fit(self, X, y):
        import torch

        validate_params(self)
        Xt, labels, on_torch = _fit_input(self, X, y)
        Xt = Xt.to(torch.float64)
        self.classes_, yi = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {len(self.classes_)} class")
        self._gamma = self._resolved_gamma(Xt)
        self.precompute_ = self._resolve_precompute(Xt)
        svc = self._libsvm_fit(Xt, yi)
        support = torch.as_tensor(svc.support_, device=Xt.device)
        self.support_ = svc.support_
        self.n_support_ = svc.n_support_
        self.support_vectors_ = Xt[support] if on_torch else Xt[support].numpy()
        self.dual_coef_, self.intercept_ = svc.dual_coef_, svc.intercept_
        self.n_iter_, self.fit_status_ = svc.n_iter_, svc.fit_status_
        self.fit_on_host_ = True  # libsvm's solver ran on the CPU, wherever the arrays are (labels read it)
        return self

    def _resolved_gamma(self, Xt) -> float:
        """The number `gamma` stands for, as scikit-learn's SVC resolves "scale" and "auto"."""
        var = float(Xt.var(correction=0)) if self.gamma == "scale" else None
        return (1.0 / (Xt.shape[1] * var) if var else 1.0) if self.gamma == "scale" else \
            1.0 / Xt.shape[1] if self.gamma == "auto" else float(self.gamma)

    def _libsvm_fit(self, Xt, yi):
        """scikit-learn's SVC (libsvm, on the host) fitted on the training rows' kernel (precomputed here) or on
        the rows themselves, as `precompute_` says."""
        from sklearn.svm import SVC

        if self.precompute_:
            kernel = self._training_kernel(Xt)
            return SVC(kernel="precomputed", C=self.C, cache_size=self.cache_size).fit(kernel, yi)
        return SVC(kernel="rbf", C=self.C, gamma=self._gamma, cache_size=self.cache_size).fit(Xt.cpu().numpy(), yi)

    def _precomputes_on(self, device: str) -> bool:
        """Whether a fit on rows on `device` would precompute the kernel, room permitting (the one home of
        the rule: the refits' memory budget reads it too, through `held_bytes`)."""
        return self.precompute is True or (self.precompute == "auto" and device.startswith("cuda"))

    def held_bytes(self, rows: int, device: str) -> int:
        """What a fit on `rows` rows on `device` holds beyond them: libsvm's kernel cache, and the whole n x n
        float64 kernel where it is precomputed."""
        return int(self.cache_size * 2 ** 20) + (8 * rows ** 2 if self._precomputes_on(device) else 0)

    def _resolve_precompute(self, Xt) -> bool:
        if self.precompute != "auto":
            return bool(self.precompute)
        from pipeline.hardware import available_memory

        free = available_memory()
        return self._precomputes_on(str(Xt.device)) and free is not None and 3 * 8 * len(Xt) ** 2 <= free

    def _training_kernel(self, Xt) -> np.ndarray:
        """The training rows' RBF kernel, float64, computed on their device in row blocks, gathered on the host."""
        import torch

        K = np.empty((len(Xt), len(Xt)))
        host, sq = torch.from_numpy(K), (Xt * Xt).sum(1)
        for a in range(0, len(Xt), self.chunk):  # each block straight into the host's array
            host[a:a + self.chunk].copy_(_rbf_kernel(Xt[a:a + self.chunk], Xt, sq, self._gamma))
        return K

    def predict(self, X):
        import torch

        X, on_torch = _predict_input(self, X)
        sv = _as_tensor(self.support_vectors_)
        X = X.to(sv.device, torch.float64)
        sign = -1 if len(self.classes_) == 2 else 1  # scikit-learn flips libsvm's signs for two classes
        coef = sign * torch.as_tensor(self.dual_coef_, device=sv.device)
        b = (sign * torch.as_tensor(self.intercept_, device=sv.device)).tolist()
        first = np.concatenate([[0], np.cumsum(self.n_support_)]).tolist()
        sq = (sv * sv).sum(1)
        if not len(X):
            return _class_labels(self.classes_, torch.zeros(0, dtype=torch.int64, device=sv.device), on_torch)
        best = torch.cat([_ovo_vote(_rbf_kernel(X[a:a + self.chunk], sv, sq, self._gamma), coef, b, first,
                                    torch.zeros(len(X[a:a + self.chunk]), len(self.classes_), dtype=torch.int64,
                                                device=sv.device)).argmax(1)
                          for a in range(0, len(X), self.chunk)])
        return _class_labels(self.classes_, best, on_torch)


def _rbf_kernel(A, B, b_sq, gamma: float):
    """exp(-gamma |a - b|^2) between the rows of A and B (torch, B's squared norms given), clipped at distance 0:
    one product into one block, the rest in place."""
    import torch

    d2 = torch.addmm(b_sq[None], A, B.T, alpha=-2).add_((A * A).sum(1, keepdim=True))
    return d2.clamp_(min=0).mul_(-gamma).exp_()


class ArrayQDA(ClassifierMixin, BaseEstimator):
    """`QuadraticDiscriminantAnalysis(reg_param, tol)`'s model and predictions, computed in torch where the
    input is: numpy in, numpy fitted arrays (float64, on the CPU); torch tensors in (CPU or CUDA), fitted
    tensors on that device. Per class, as scikit-learn 1.9's `solver="svd"`: an SVD of the centred rows, the
    covariance's eigenvalues S**2 / n_k shrunk toward 1 by `reg_param`, a class with an eigenvalue <= `tol`
    refused as collinear; a row's score is the Gaussian log-likelihood (up to a constant) plus the log prior."""

    _parameter_constraints = {"reg_param": [Interval(Real, 0, 1, closed="both")],
                              "tol": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, reg_param: float = 0.0, tol: float = 1e-4):
        self.reg_param = reg_param
        self.tol = tol

    def fit(self, X, y):
        import torch

        validate_params(self)
        Xt, labels, on_torch = _fit_input(self, X, y)
        self.classes_, yi = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {len(self.classes_)} class")
        counts = np.bincount(yi)
        if counts.min() < 2:
            raise ValueError(f"y has only 1 sample in class {self.classes_[counts.argmin()]}, covariance is ill "
                             f"defined.")
        yi = torch.as_tensor(yi, device=Xt.device)
        means, rotations, scalings = zip(*(self._class_gaussian(Xt[yi == k], k) for k in range(len(self.classes_))))
        out = (lambda t: t) if on_torch else (lambda t: t.numpy())
        self.means_ = out(torch.stack(means))
        self.priors_ = out(torch.as_tensor(counts / counts.sum(), dtype=Xt.dtype, device=Xt.device))
        self.rotations_ = [out(r) for r in rotations]
        self.scalings_ = [out(s) for s in scalings]
        return self

    def _class_gaussian(self, Xk, k: int):
        """Class k's (mean, rotation, regularised covariance eigenvalues) from an SVD of its centred rows,
        refused as scikit-learn 1.9 refuses a class with an eigenvalue <= tol."""
        import torch

        mu = Xk.mean(0)
        _, S, Vt = torch.linalg.svd(Xk - mu, full_matrices=False)
        S2 = (1 - self.reg_param) * S ** 2 / len(Xk) + self.reg_param
        if int((S2 > self.tol).sum()) < self.n_features_in_:  # as scikit-learn 1.9 refuses it
            raise np.linalg.LinAlgError(f"The covariance matrix of class {self.classes_[k]} is not full rank. "
                                        f"Increase the value of `reg_param` to reduce the collinearity.")
        return mu, Vt.T, S2

    def _scores(self, X):
        import torch

        X, on_torch = _predict_input(self, X)
        means = _as_tensor(self.means_)
        X = X.to(means.dtype)
        cols = []
        for mu, R, S in zip(means, map(_as_tensor, self.rotations_), map(_as_tensor, self.scalings_)):
            z = (X - mu) @ (R * S ** -0.5)
            cols.append(-0.5 * ((z ** 2).sum(1) + torch.log(S).sum()))
        return torch.stack(cols, 1) + torch.log(_as_tensor(self.priors_)), on_torch

    def decision_function(self, X):
        d, on_torch = self._scores(X)
        d = d[:, 1] - d[:, 0] if len(self.classes_) == 2 else d
        return d if on_torch else d.numpy()

    def predict_log_proba(self, X):
        d, on_torch = self._scores(X)
        d = d.log_softmax(1)
        return d if on_torch else d.numpy()

    def predict_proba(self, X):
        d, on_torch = self._scores(X)
        p = d.softmax(1)
        return p if on_torch else p.numpy()

    def predict(self, X):
        d, on_torch = self._scores(X)
        return _class_labels(self.classes_, d.argmax(1), on_torch)


class ArrayKNN(ClassifierMixin, BaseEstimator):
    """`KNeighborsClassifier(n_neighbors, weights)` with the Euclidean metric, computed in torch where the input
    is (numpy: float64 on the CPU; torch tensors: on their device). Squared distances as
    |x|^2 - 2 x.X^T + |X|^2 (clipped at 0) in chunks of `chunk` queries, the `n_neighbors` nearest by top-k,
    then scikit-learn's vote: uniform, or weights 1/distance with a query's zero-distance neighbours taking
    the whole vote; a tied vote goes to the smallest class. Neighbours tied at exactly the k-th distance may
    be chosen differently from scikit-learn's."""

    _parameter_constraints = {"n_neighbors": [Interval(Integral, 1, None, closed="left")],
                              "weights": [StrOptions({"uniform", "distance"})],
                              "chunk": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, n_neighbors: int = 5, weights: str = "uniform", chunk: int = 2048):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.chunk = chunk

    def fit(self, X, y):
        import torch

        validate_params(self)
        Xt, labels, on_torch = _fit_input(self, X, y)
        if self.n_neighbors > len(Xt):
            raise ValueError(f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {self.n_neighbors}, "
                             f"n_samples_fit = {len(Xt)}, n_samples = {len(Xt)}")
        self.classes_, yi = np.unique(labels, return_inverse=True)
        self.fit_X_ = Xt if on_torch else Xt.numpy()
        self.fit_y_ = torch.as_tensor(yi, device=Xt.device) if on_torch else yi
        return self

    def _votes(self, X):
        import torch

        X, on_torch = _predict_input(self, X)
        F, fy = _as_tensor(self.fit_X_), _as_tensor(self.fit_y_)
        X = X.to(F.dtype)
        f2 = (F * F).sum(1)
        out = []
        for i in range(0, len(X), self.chunk):
            q = X[i:i + self.chunk]
            d2 = ((q * q).sum(1, keepdim=True) - 2 * q @ F.T + f2).clamp_(min=0)
            dist, idx = d2.topk(self.n_neighbors, dim=1, largest=False)
            if self.weights == "uniform":
                w = torch.ones_like(dist)
            else:
                dist = dist.sqrt()
                zero = dist == 0
                w = torch.where(zero.any(1, keepdim=True), zero.to(dist.dtype), 1 / dist)
            votes = torch.zeros(len(q), len(self.classes_), dtype=dist.dtype, device=dist.device)
            out.append(votes.scatter_add_(1, fy[idx], w))
        return torch.cat(out), on_torch

    def predict_proba(self, X):
        v, on_torch = self._votes(X)
        p = v / v.sum(1, keepdim=True)
        return p if on_torch else p.numpy()

    def predict(self, X):
        v, on_torch = self._votes(X)
        return _class_labels(self.classes_, v.argmax(1), on_torch)  # the first maximum: the smallest class


def _fit_input(est, X, y):
    """(rows as a float tensor, labels as numpy, whether X was a tensor): a tensor as it is (its device; its
    feature count recorded), numpy validated as scikit-learn does and viewed as a float64 CPU tensor."""
    if _is_tensor(X):
        Xt, labels, on_torch = (X if X.is_floating_point() else X.double()), _tensor_labels(est, X, y), True
    else:
        X, y = validate_data(est, X, y, dtype=np.float64)
        Xt, labels, on_torch = _cpu_tensor(X), y, False
    check_classification_targets(labels)
    return Xt, labels, on_torch


def _tensor_labels(est, X, y) -> np.ndarray:
    """A tensor's rows checked (2-D, their feature count recorded on `est`) and its labels as numpy."""
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D tensor, got {X.ndim}-D")
    est.n_features_in_ = X.shape[1]
    return np.asarray(_to_numpy(y))


def _as_tensor(a):
    """A fitted attribute as a tensor: itself when fitted on tensors, a view of the numpy array otherwise."""
    import torch

    return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)


def _class_labels(classes: np.ndarray, best, on_torch: bool):
    """The classes at the winning indices: on the input's device when it was a tensor and the labels are
    numbers, else numpy."""
    import torch

    if on_torch and classes.dtype.kind in "iub":
        return torch.as_tensor(classes, device=best.device)[best]
    return classes[best.cpu().numpy()]


def _predict_input(est, X):
    """(rows as a tensor, whether X was one) for a fitted estimator's scores."""
    check_is_fitted(est)
    if _is_tensor(X):
        return X, True
    return _cpu_tensor(validate_data(est, X, dtype=np.float64, reset=False)), False


def _cpu_tensor(X: np.ndarray):
    """A numpy array as a CPU tensor without a copy, unless it is read-only (a memory-mapped store)."""
    import torch

    return torch.from_numpy(X if X.flags.writeable else X.copy())


def _to_numpy(y):
    return y.detach().cpu().numpy() if hasattr(y, "detach") else y
