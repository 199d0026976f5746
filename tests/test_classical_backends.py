"""One contract over every classifier x preset, and every map method, x backend that can run here.

Each record must come from fits that all worked (a grid invalid for the formulation a backend runs fails
here), have finite scores, and name the backend that *actually* fitted it: checked on the fitted estimator
itself (torch tensors in its fitted attributes, a cuml.accel proxy with a GPU model), never on a label.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, blobs, run_cli, write_store

from pipeline.classical.backends import ArrayAPI, executed_on, make_backend
from pipeline.classical.search import classify
from pipeline.classical.specs import CLASSIFIERS, PRESETS
from pipeline.errors import PipelineError
from pipeline.hardware import resolve_device
from pipeline.store.featuresets import FeatureSet


def _has_cuml() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("cuml") is not None


BACKENDS = [
    pytest.param("sklearn-cpu", id="sklearn-cpu"),
    pytest.param("array-api-cpu", id="array-api-torch-cpu"),
    pytest.param("array-api-cuda", id="array-api-torch-cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]


def _backend(name: str):
    return {"sklearn-cpu": lambda: make_backend("cpu"),
            "array-api-cpu": lambda: make_backend("cpu", array_api=True),
            "array-api-cuda": lambda: make_backend("cuda", cuml=False)}[name]()


def tiny_set(n_train=300, n_test=100, dim=16) -> FeatureSet:
    from pipeline.data import FASHION_MNIST_CLASSES

    X, y = blobs(n_train, dim=dim, spread=1.5)
    Xt, yt = blobs(n_test, dim=dim, seed=1, spread=1.5)
    return FeatureSet(X, y, Xt, yt, {"config_hash": "toy"}, name="toy", classes=FASHION_MNIST_CLASSES,
                      dataset="fashion-mnist")


def _fitted_arrays(model) -> list:
    final = model.steps[-1][1]
    return [v for k, v in vars(final).items() if k.endswith("_") and not k.startswith("_")]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_every_classifier_and_preset_on_every_backend(backend_name, preset):
    backend = _backend(backend_name)
    fs = tiny_set()
    models, logs = {}, []
    recs = classify([fs], list(CLASSIFIERS), preset, 3, backend=backend, n_jobs=2, progress=False,
                    models=models, log=logs.append)
    assert [r["classifier"] for r in recs] == list(CLASSIFIERS)
    for r in recs:
        c = r["classifier"]
        assert r["failed_fits"] == 0, (c, preset, r["fit_errors"])
        assert np.isfinite([r["cv_mean"], r["cv_std"], r["test_accuracy"], r["macro_f1"]]).all(), r
        assert r["test_accuracy"] > 0.5, r  # the blobs are separable: chance is 0.1
        arrays = _fitted_arrays(models[(fs.name, c)])
        on_torch = [a for a in arrays if isinstance(a, torch.Tensor)]
        # which formulation ran is read off the fitted object ...
        assert bool(on_torch) == CLASSIFIERS[c].native(backend), (c, backend.name)
        # ... and the record says exactly that (and where a solver ran on the host beside the arrays, both)
        model = models[(fs.name, c)]
        host = " + sklearn-cpu" if vars(model.steps[-1][1]).get("fit_on_host_") else ""
        if on_torch:
            assert r["backend"] == f"sklearn-array-api-{on_torch[0].device.type}{host}", r["backend"]
            assert r["device"] == str(on_torch[0].device)
        else:
            assert r["backend"] == "sklearn-cpu" and r["device"] == "cpu", (c, r["backend"])
        # every step says where it ran, read from its own fitted arrays (not the final step's)
        assert list(r["steps"]) == [name for name, _ in model.steps], (c, r["steps"])
        for name, step in model.steps:
            tensors = [v for k, v in vars(step).items() if k.endswith("_") and isinstance(v, torch.Tensor)]
            host = " + sklearn-cpu" if vars(step).get("fit_on_host_") else ""
            want = (f"sklearn-array-api-{tensors[0].device.type}{host} on {tensors[0].device}" if tensors
                    else "sklearn-cpu on cpu")
            assert r["steps"][name] == want, (c, name, r["steps"])
    if backend.array_api:
        on_torch = {r["classifier"] for r in recs if r["backend"] != "sklearn-cpu"}
        assert on_torch == {"lda", "qda", "logreg", "linsvc", "svc", "knn"}  # the forest stays on numpy
        # the kernel precomputed where the rows are on a GPU; on the CPU libsvm computes its own
        assert models[(fs.name, "svc")].steps[-1][1].precompute_ is (backend.device != "cpu")


MAP_IMPLEMENTATIONS = {False: {"pca": "PCAMap", "tsne": "TSNEMap", "umap": "UMAPMap"},  # numpy: the CPU libraries
                       True: {"pca": "PCAMap", "tsne": "TorchdrTSNEMap", "umap": "TorchdrUMAPMap"}}  # torch


@pytest.mark.parametrize("method", ["pca", pytest.param("tsne", marks=pytest.mark.slow),
                                    pytest.param("umap", marks=pytest.mark.slow)])  # numba compiles UMAP
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_every_map_method_on_every_backend(backend_name, method, tmp_path):
    """Every map method on every backend: a finite 2-D map of every row whose neighbourhoods keep the classes,
    and a record naming the implementation that drew it (torchdr's on an Array API backend's device)."""
    from pipeline.maps.project import load_map, project

    if method != "pca" and backend_name != "sklearn-cpu":
        pytest.importorskip("torchdr")
    backend = _backend(backend_name)
    fs = tiny_set(120, 40)
    meta, = project([fs], [method], tmp_path, backend=backend, n_jobs=2, log=lambda m: None)[method]
    coords, saved = load_map(tmp_path, fs.name, method)
    assert coords.shape == (160, 2) and np.isfinite(coords).all() and saved == meta
    assert meta["implementation"] == MAP_IMPLEMENTATIONS[backend.array_api][method]
    assert meta["knn_accuracy"] > 0.5 and meta["trustworthiness"] > 0.7, meta  # chance: 0.1


def test_host_classifiers_run_beside_the_device_ones_with_the_same_records(tmp_path, monkeypatch):
    """On a device backend the classifiers with no formulation there (the forest) run on a host thread at the
    same time as the others, not after them: here the forest's search waits until k-NN's (the last device
    classifier, after it in the order) has started, which only happens side by side. The records are those
    of the classifiers run one after another, in the classifiers' order; a device classifier that fails lets
    the forest finish the feature set in progress, keep its record and start no other."""
    import threading

    from pipeline.classical import search

    fs = tiny_set()
    names = ["lda", "rf", "knn"]
    knn_started, seen, real = threading.Event(), {}, search._search

    def watched(fs, c, *a):
        seen[c] = threading.current_thread().name
        if c == "knn":
            knn_started.set()
        if c == "rf":
            assert knn_started.wait(60), "the forest did not run beside the device classifiers"
        return real(fs, c, *a)

    monkeypatch.setattr(search, "_search", watched)
    logs = []
    beside = classify([fs], names, "quick", 3, backend=ArrayAPI("cpu", overlap_host=True), n_jobs=2,
                      progress=False, log=logs.append)
    assert seen["rf"] != seen["lda"] == seen["knn"]
    assert "on the host's cores while the device fits the others: rf" in logs
    monkeypatch.setattr(search, "_search", real)
    in_turn = classify([fs], names, "quick", 3, backend=ArrayAPI("cpu", overlap_host=False), n_jobs=2,
                       progress=False)
    keep = ("classifier", "test_accuracy", "cv_mean", "best_params", "backend", "device", "steps")
    assert [{k: r[k] for k in keep} for r in beside] == [{k: r[k] for k in keep} for r in in_turn]

    # two feature sets; the forest's first search waits until k-NN (on the device side) has failed
    other = FeatureSet(fs.X_train, fs.y_train, fs.X_test, fs.y_test, {"config_hash": "toy2"}, name="toy2",
                       classes=fs.classes, dataset=fs.dataset)
    knn_failed = threading.Event()

    def failing(fs, c, *a):
        if c == "knn":
            knn_failed.set()
            raise PipelineError("knn broke")
        if c == "rf" and fs.name == "toy":
            assert knn_failed.wait(60)
            assert told_to_stop.wait(60)  # the failure reached the main thread, which told the forest to stop
        return real(fs, c, *a)

    monkeypatch.setattr(search, "_search", failing)
    logs.clear()
    told_to_stop = threading.Event()

    def log(m):  # the main thread says this once it has set the host thread's stop event
        logs.append(m)
        if "waiting for the host's classifier to finish its feature set" in m:
            told_to_stop.set()

    with pytest.raises(PipelineError, match="knn broke"):
        classify([fs, other], names, "quick", 3, backend=ArrayAPI("cpu", overlap_host=True), n_jobs=2,
                 progress=False, out=tmp_path, log=log)
    saved = {(r["feature_set"], r["classifier"]) for r in json.loads((tmp_path / "results.json").read_text())}
    # the forest finished the feature set in progress, kept its record, and did not start the next
    assert saved == {("toy", "lda"), ("toy2", "lda"), ("toy", "rf")}, saved
    assert any("waiting for the host's classifier to finish its feature set" in m for m in logs), logs


def test_failed_fits_are_counted_and_all_failing_is_one_line(tmp_path):
    """A fit that raises (here: an invalid C, on the array-API formulation) is scored NaN and counted; the
    search goes on; only every candidate failing is an error."""
    fs = tiny_set()
    backend = make_backend("cpu", array_api=True)
    logs = []
    rec, = classify([fs], ["logreg"], {"logreg": {"clf__C": [-1.0, 1.0]}}, 3, backend=backend, progress=False,
                    log=logs.append)
    assert rec["failed_fits"] == 3 and "InvalidParameterError" in rec["fit_errors"][0]
    assert rec["best_params"] == {"C": 1.0} and np.isfinite(rec["cv_mean"])
    assert rec["backend"] == "sklearn-array-api-cpu"
    assert any("3 of 6 fits failed and were scored NaN" in m for m in logs), logs
    with pytest.raises(PipelineError, match="logreg failed on every candidate .*InvalidParameterError"):
        classify([fs], ["logreg"], {"logreg": {"clf__C": [-1.0]}}, 3, backend=backend, progress=False)


def test_a_custom_grid_keeps_the_formulation_it_was_written_for():
    """The bug a CUDA user without cuML hit: shrinkage in an SVD (array-API) LDA raised NotImplementedError.
    Presets have a grid per formulation; a custom grid (written for scikit-learn's LDA) runs that LDA."""
    fs = tiny_set()
    backend = make_backend("cpu", array_api=True)
    rec, = classify([fs], ["lda"], {"lda": {"clf__shrinkage": ["auto", 0.1]}}, 3, backend=backend,
                    progress=False)
    assert rec["failed_fits"] == 0 and rec["backend"] == "sklearn-cpu"
    rec, = classify([fs], ["lda"], "default", 3, backend=backend, progress=False)
    assert rec["failed_fits"] == 0 and rec["backend"] == "sklearn-array-api-cpu" and "tol" in rec["best_params"]


def test_all_candidates_failing_is_one_line_from_the_cli(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, y = blobs(120)
    store = write_store(tmp_path / "s", X, y, *blobs(40, seed=1))
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"linsvc": {"clf__C": [-1.0]}}))
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "linsvc", "--grid", grid,
                "--out", tmp_path / "o")
    assert_one_line_error(r, "linsvc failed on every candidate", "InvalidParameterError")
    assert not (tmp_path / "o" / "results.json").exists()
    grid.write_text("[1, 2]")
    r = run_cli(runner, "classify", "--features", store, "--grid", grid, "--out", tmp_path / "o")
    assert_one_line_error(r, "expected a JSON object", "not a list")


def test_one_device_parser():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(PipelineError, match="use auto, cpu, cuda or cuda:N"):
            make_backend(bad)
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:1"):  # the same answer from classify's and extract's parser
            with pytest.raises(PipelineError, match="no CUDA device is visible"):
                make_backend(dev)
            from pipeline.embed.engines import resolve_device as engines_parser
            with pytest.raises(PipelineError, match="no CUDA device is visible"):
                engines_parser(dev)


def test_executed_on_reads_the_fitted_object():
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(60)
    assert executed_on(LogisticRegression().fit(X, y)) == ("sklearn-cpu", "cpu")
    assert executed_on(LogisticRegression().fit(torch.as_tensor(X), torch.as_tensor(y))) == ("sklearn-cpu", "cpu")


def test_a_pipeline_is_labelled_by_every_step_not_the_last():
    """GPU PCA then CPU QDA must not read "cpu": here PCA on torch tensors (array-API), QDA on numpy, and a
    stateless step that ran wherever its input was."""
    import sklearn
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from pipeline.classical.backends import STATELESS, steps_ran_on

    X, y = blobs(90)
    X = np.abs(X)
    with sklearn.config_context(array_api_dispatch=True):
        pca = PCA(4).fit(torch.as_tensor(X))
    pipe = Pipeline([("sqrt", FunctionTransformer(np.sqrt).fit(X)), ("pca", pca),
                     ("qda", QuadraticDiscriminantAnalysis().fit(X[:, :4], y))])
    assert steps_ran_on(pipe) == {"sqrt": (STATELESS, STATELESS), "pca": ("sklearn-array-api-cpu", "cpu"),
                                  "qda": ("sklearn-cpu", "cpu")}
    assert executed_on(pipe) == ("sklearn-array-api-cpu + sklearn-cpu", "cpu")


STAND_IN = Path(__file__).parent / "stand_in_cuml"
# A fresh process in which torch believes in one CUDA device, and `cuml` is the stand-in package: its accel
# imports scikit-learn, as the real one does. Then what the CLI does, start to finish.
STAND_IN_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_name = lambda device=None: "a stand-in GPU"
if sys.argv[2] == "sklearn-first":
    import sklearn  # a user's script that imported scikit-learn before pipeline could hook it
from pipeline.cli import main
main(["classify", "--features", "raw", "--data-dir", sys.argv[3], "--classifiers", "lda,logreg,svc", "--grid",
      "quick", "--cv", "2", "--device", "cuda", "--n-jobs", "1", "--out", sys.argv[4]])
"""


@pytest.mark.parametrize("order", ["pipeline-first", "sklearn-first"])
def test_cuml_accel_starts_before_scikit_learn_and_labels_what_ran(tmp_path, order):
    """cuml.accel installed by the CLI before scikit-learn is imported, although importing cuml.accel imports
    scikit-learn itself; each record's backend read from its proxy (a GPU fit, or the SVC's CPU fallback for ten
    classes); and scikit-learn imported first is one line, not a run on the wrong backend."""
    from helpers import make_idx_dir

    data = make_idx_dir(tmp_path / "d", n_train=120, n_test=40)
    res = subprocess.run([sys.executable, "-c", STAND_IN_SCRIPT, str(STAND_IN), order, str(data), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if order == "sklearn-first":
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
        assert res.stderr.strip().splitlines()[-1].startswith("error: cuML is installed but scikit-learn was imported")
        assert not (tmp_path / "o").exists()
        return
    assert res.returncode == 0, res.stderr[-3000:]
    records = {r["classifier"]: r for r in json.loads((tmp_path / "o" / "results.json").read_text())}
    assert {c: (r["backend"], r["device"]) for c, r in records.items()} == {
        "lda": ("sklearn-cpu", "cpu"),  # not a proxy: cuML does not accelerate LDA
        "logreg": ("sklearn-cpu + cuml", "cpu + cuda"),  # the stand-in proxies no scaler: step by step
        "svc": ("sklearn-cpu + sklearn-cpu (cuml.accel fallback)", "cpu")}
    assert records["svc"]["steps"] == {"scale": "sklearn-cpu on cpu", "pca": "sklearn-cpu on cpu",
                                       "clf": "sklearn-cpu (cuml.accel fallback) on cpu"}
    assert all(r["failed_fits"] == 0 for r in records.values())


CUML_SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
from pipeline.classical.backends import make_backend
backend = make_backend("cuda")  # installs cuml.accel before scikit-learn is imported
from sklearn.linear_model import LogisticRegression
import cuml.accel
assert cuml.accel.enabled() and cuml.accel.is_proxy(LogisticRegression), "cuml.accel is not active"
from pipeline.classical.search import classify
from pipeline.classical.specs import CLASSIFIERS
from test_classical_backends import tiny_set
fs = tiny_set()
models = {}
recs = classify([fs], list(CLASSIFIERS), "quick", 3, backend=backend, progress=False, models=models)
out = {}
for r in recs:
    final = models[(fs.name, r["classifier"])].steps[-1][1]
    gpu = vars(final).get("_gpu") is not None if cuml.accel.is_proxy(final) else None
    out[r["classifier"]] = [r["steps"]["clf"], gpu, r["failed_fits"], r["test_accuracy"]]
print(json.dumps({"backend": backend.name, "records": out}))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuml(), reason="needs cuML and a CUDA device")
def test_cuml_accel_is_turned_on_and_labels_come_from_the_estimator():
    """In a fresh process, as the CLI runs: cuml.accel hooks scikit-learn, and each record says whether
    its estimator fitted on the GPU (cuML) or fell back / was never covered (LDA, QDA)."""
    res = subprocess.run([sys.executable, "-c", CUML_SCRIPT], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["backend"] == "cuml"
    for c, (label, gpu, failed, acc) in got["records"].items():
        assert failed == 0 and acc > 0.5, (c, label)
        assert label == ("cuml on cuda" if gpu else "sklearn-cpu (cuml.accel fallback) on cpu" if gpu is False
                         else "sklearn-cpu on cpu")
    assert got["records"]["logreg"][0] == "cuml on cuda"
