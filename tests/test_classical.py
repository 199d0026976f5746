"""Stage 2 on small synthetic data: every classifier, outputs, the CLI, Dask, array-API, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, blobs, fits_on_cluster, make_idx_dir, run_cli, write_store

from pipeline.classical.backends import make_backend
from pipeline.classical.search import classify
from pipeline.classical.specs import CLASSIFIERS
from pipeline.errors import PipelineError
from pipeline.references import STUDY
from pipeline.store.featuresets import load_feature_set


@pytest.fixture
def data_dir(tmp_path):
    return make_idx_dir(tmp_path / "fmnist", n_train=200, n_test=60)


@pytest.fixture
def store(tmp_path, data_dir):
    """Embeddings for the same labels as the IDX files (as an extract would have made)."""
    raw = load_feature_set("raw", "fashion-mnist", data_dir)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (10, 16))
    emb = lambda y: (centres[y] + rng.normal(0, 1, (len(y), 16))).astype(np.float32)  # noqa: E731
    return write_store(tmp_path / "features" / "fashion-mnist" / "toynet", emb(raw.y_train), raw.y_train,
                       emb(raw.y_test), raw.y_test)


def test_every_classifier_on_raw_and_embeddings(tmp_path, data_dir, store):
    sets = [load_feature_set("raw", "fashion-mnist", data_dir), load_feature_set(str(store), "fashion-mnist")]
    out = tmp_path / "report"
    recs = classify(sets, list(CLASSIFIERS), "quick", 3, out=out, n_jobs=2, progress=False)
    assert len(recs) == 2 * len(CLASSIFIERS)
    for r in recs:
        assert r["test_accuracy"] > 0.5, r  # chance is 0.1: the data are separable
        assert 0 <= r["cv_std"] <= r["cv_mean"] <= 1 and r["macro_f1"] > 0.4
        assert r["backend"] == "sklearn-cpu" and r["fit_seconds"] >= 0 and r["predict_seconds"] >= 0
        assert r["n_train"] == 200 and r["n_test"] == 60 and r["cv_folds"] == 3
        assert np.asarray(r["confusion_matrix"]).sum() == 60
        assert set(r["per_class"]) == set(sets[0].classes)
        assert (out / "confusion" / f"{r['feature_set']}_{r['classifier']}.png").stat().st_size > 5000
    saved = json.loads((out / "results.json").read_text())
    assert {(r["feature_set"], r["classifier"]) for r in saved} == {(r["feature_set"], r["classifier"]) for r in recs}
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("feature_set,classifier,test_accuracy") and len(csv) == 1 + len(recs)
    md = (out / "results.md").read_text()
    assert "raw (study)" in md and f"{STUDY['qda'][1]:.4f}" in md and "toynet (ours)" in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(CLASSIFIERS)  # header + rows


def test_default_grid_searches_and_picks_the_best(tmp_path, store, monkeypatch):
    from pipeline.classical import search as cl

    fs = load_feature_set(str(store), "fashion-mnist")
    scored, real = [], cl._fit_score  # every fit's (C, fold accuracy), as the search scored it

    def spy(backend, classifier, native, params, *args):
        score, err = real(backend, classifier, native, params, *args)
        scored.append((params["clf__C"], score))
        return score, err

    monkeypatch.setattr(cl, "_fit_score", spy)  # n_jobs=1: the fits run in this process, through the spy
    rec, = classify([fs], ["logreg"], "default", 3, n_jobs=1, progress=False)
    grid = CLASSIFIERS["logreg"].grids["default"]["clf__C"]
    assert rec["candidates"] == len(grid)
    cv = {C: [s for c, s in scored if c == C] for C in grid}  # the CV table: C -> its folds' accuracies
    assert all(len(s) == 3 for s in cv.values()), cv
    means = [np.mean(cv[C]) for C in grid]
    assert len(set(means)) > 1, cv  # the candidates differ: picking the best is a real choice
    assert rec["best_params"]["C"] == grid[int(np.argmax(means))], (rec["best_params"], cv)  # the first best
    best = cv[rec["best_params"]["C"]]
    assert rec["cv_mean"] == pytest.approx(max(means)) and rec["cv_std"] == pytest.approx(np.std(best))


def test_refits_use_every_core_and_predict_the_same(tmp_path, store):
    """The linear SVC is this project's L-BFGS solver (BLAS on every core) and its saved model loads; the
    forest grows its trees on n_jobs; the RBF SVC's test predictions (by BLAS) are its own predict's."""
    from pipeline.classical.solvers import DenseLinearSVC
    from pipeline.models.saved import load_model

    fs = load_feature_set(str(store), "fashion-mnist")
    models = {}
    recs = {r["classifier"]: r for r in classify([fs], ["linsvc", "rf", "svc"], "quick", 3, n_jobs=2,
                                                out=tmp_path, progress=False, models=models)}
    svc = models[(fs.name, "linsvc")].named_steps["clf"]
    assert type(svc) is DenseLinearSVC and svc.n_iter_ > 0 and svc.coef_.shape == (10, fs.X_train.shape[1])
    assert recs["linsvc"]["backend"] == "sklearn-cpu" and recs["linsvc"]["test_accuracy"] > 0.5
    assert recs["linsvc"]["estimator"] == ["sklearn.preprocessing._data.StandardScaler",  # what ran: the fitted
                                           "pipeline.classical.solvers.DenseLinearSVC"]  # model's classes
    assert models[(fs.name, "rf")].named_steps["clf"].n_jobs == 2
    # the record's accuracy (the kernel by BLAS) is that of the model's own predict (libsvm)
    assert recs["svc"]["test_accuracy"] == (models[(fs.name, "svc")].predict(fs.X_test) == fs.y_test).mean()
    saved, card = load_model(tmp_path / recs["linsvc"]["model"])  # our own estimator saves and loads (skops)
    assert type(saved.named_steps["clf"]) is DenseLinearSVC
    assert card["record"]["estimator"] == recs["linsvc"]["estimator"]
    assert np.array_equal(saved.predict(fs.X_test), models[(fs.name, "linsvc")].predict(fs.X_test))


def test_one_core_refits_of_the_feature_sets_run_at_once(data_dir, store, monkeypatch):
    """The RBF SVC refits on one core (libsvm, without the GIL): with two feature sets and two cores, the two
    refits run at once (each waits at a barrier for the other: one after another would break it), with the
    records of refitting them one after another; the other classifiers refit each after its own search."""
    import threading

    from pipeline.classical import search as cl

    sets = [load_feature_set("raw", "fashion-mnist", data_dir), load_feature_set(str(store), "fashion-mnist")]
    alone = {(r["feature_set"], r["classifier"]): r for r in classify(sets, ["svc", "lda"], "quick", 3, n_jobs=1,
                                                                        progress=False)}
    barrier, real, refitted = threading.Barrier(2, timeout=60), cl._refit_and_test, []

    def at_a_barrier(fs, c, *args):
        if c == "svc":
            barrier.wait()  # both feature sets' refits are running
        refitted.append((fs.name, c))
        return real(fs, c, *args)

    monkeypatch.setattr(cl, "_refit_and_test", at_a_barrier)
    together = classify(sets, ["svc", "lda"], "quick", 3, n_jobs=2, progress=False)
    assert sorted(refitted[:2]) == [("raw", "svc"), ("toynet", "svc")] and refitted[2:] == [("raw", "lda"),
                                                                                          ("toynet", "lda")]
    timing = {"fit_seconds", "predict_seconds", "search_seconds"}
    for r in together:
        r0 = alone[(r["feature_set"], r["classifier"])]
        assert {k: v for k, v in r.items() if k not in timing} == {k: v for k, v in r0.items() if k not in timing}
    order = [(r["feature_set"], r["classifier"]) for r in together]  # the refits at once: as each ended
    assert sorted(order[:2]) == [("raw", "svc"), ("toynet", "svc")] and order[2:] == [("raw", "lda"), ("toynet", "lda")]


def test_refits_at_once_within_memory_and_a_failed_one_keeps_the_others(tmp_path, data_dir, store, monkeypatch):
    """As many one-core refits at once as cores, feature sets and half the free memory allow (an RBF SVC's
    kernel cache is 1000 MiB; on a GPU, ArraySVC's whole n x n float64 kernel as well); one that fails is one
    line, after the others' records are saved."""
    from pipeline.classical import search as cl
    from pipeline.classical.backends import ArrayAPI, SklearnCPU

    sets = [load_feature_set("raw", "fashion-mnist", data_dir), load_feature_set(str(store), "fashion-mnist")]
    for free, n in ((None, 2), (5 * 2 ** 30, 2), (3 * 2 ** 30, 1)):
        monkeypatch.setattr(cl, "available_memory", lambda free=free: free)
        assert cl._refits_at_once("svc", sets, 8, SklearnCPU(), False) == n, free
    assert cl._refits_at_once("svc", sets, 1, SklearnCPU(), False) == 1  # one core
    assert cl._refits_at_once("lda", sets, 8, SklearnCPU(), False) == 1  # its refit uses every core already
    # two refits fit in half the free memory with libsvm's cache alone, but not with a GPU-precomputed kernel
    per_refit = max(2 ** 30 * 1000 // 1024 + 4 * fs.X_train.nbytes for fs in sets)
    kernel = 8 * max(len(fs.y_train) for fs in sets) ** 2
    monkeypatch.setattr(cl, "available_memory", lambda: 4 * per_refit + kernel)
    assert cl._refits_at_once("svc", sets, 8, ArrayAPI("cpu"), True) == 2  # on CPU tensors libsvm's own kernel
    assert cl._refits_at_once("svc", sets, 8, ArrayAPI("cuda:0"), True) == 1
    monkeypatch.setattr(cl, "available_memory", lambda: None)
    import dataclasses

    from sklearn.base import BaseEstimator

    class OutOfMemory(BaseEstimator):
        def fit(self, X, y):
            raise MemoryError()

    # raw's refit on all its rows runs out of memory in its fit (the search's fits are not refits)
    raw_refit = lambda est, n, X: OutOfMemory() if X is sets[0].X_train else est  # noqa: E731
    monkeypatch.setitem(CLASSIFIERS, "svc", dataclasses.replace(CLASSIFIERS["svc"], refit_on=raw_refit))
    with pytest.raises(PipelineError, match=r"^svc with \{.*\} failed when refitted on all of raw "
                                            r"\(MemoryError: \)$"):
        classify(sets, ["svc"], "quick", 3, n_jobs=2, out=tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["feature_set"], r["classifier"]) for r in saved] == [("toynet", "svc")]


def test_svc_predictions_by_blas_are_the_models_own():
    from sklearn.datasets import make_classification

    from pipeline.classical.search import _estimator
    from pipeline.classical.specs import CLASSIFIERS

    X, y = make_classification(301, 20, n_informative=10, n_classes=4, random_state=0)
    est = _estimator("svc", False, {"pca__n_components": 10}).fit(X, y)
    assert np.array_equal(CLASSIFIERS["svc"].fast_predict(est, X), est.predict(X))


def test_results_merge_across_runs(tmp_path, store):
    fs = load_feature_set(str(store), "fashion-mnist")
    out = tmp_path / "r"
    classify([fs], ["lda"], "quick", 3, out=out, progress=False)
    classify([fs], ["knn", "lda"], "quick", 3, out=out, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert sorted(r["classifier"] for r in saved) == ["knn", "lda"]


def test_cli_classify(runner, tmp_path, data_dir, store, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store is found by name under ./features/fashion-mnist/
    r = run_cli(runner, "classify", "--features", "raw,toynet", "--data-dir", data_dir, "--classifiers",
                "lda,logreg", "--grid", "quick", "--n-jobs", 1)
    assert r.exit_code == 0, r.output
    assert "| LDA |" in r.stdout and "| Logistic regression |" in r.stdout
    assert (tmp_path / "reports" / "fashion-mnist" / "results.json").exists()


def test_dask_path(store):
    distributed = pytest.importorskip("distributed")
    fs = load_feature_set(str(store), "fashion-mnist")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        recs = classify([fs], ["logreg", "rf"], "quick", 3, dask=cluster.scheduler_address, progress=False)
        ran_there = fits_on_cluster(cluster)
    assert all(r["test_accuracy"] > 0.5 for r in recs)
    assert ran_there >= 1  # the search's fits ran on the cluster's worker, not in this process's pool


def test_array_api_on_torch_cpu_tensors(store, tmp_path):
    from pipeline.models.saved import load_model

    fs = load_feature_set(str(store), "fashion-mnist")
    backend = make_backend("cpu", array_api=True)
    recs = {r["classifier"]: r for r in classify([fs], ["lda", "qda", "logreg", "linsvc", "svc", "knn", "rf"], "quick",
                                                 3, backend=backend, progress=False, out=tmp_path)}
    for c, name, fitted in (("qda", "ArrayQDA", "means_"), ("svc", "ArraySVC", "support_vectors_")):
        model, _ = load_model(tmp_path / recs[c]["model"])  # saved with numpy arrays, loaded as a trusted type
        assert type(model[-1]).__name__ == name and isinstance(getattr(model[-1], fitted), np.ndarray)
        assert (model.predict(fs.X_test) == np.load(tmp_path / "predictions" / f"{fs.name}_{c}.npy")).mean() >= 0.98
    native = ("lda", "qda", "logreg", "linsvc", "svc", "knn")
    assert {recs[c]["backend"] for c in native} == {"sklearn-array-api-cpu", "sklearn-array-api-cpu + sklearn-cpu"}
    assert recs["svc"]["steps"]["clf"] == "sklearn-array-api-cpu + sklearn-cpu on cpu"  # libsvm on the host
    assert recs["rf"]["backend"] == "sklearn-cpu"  # not supported by array-API dispatch: stays on numpy
    plain = {r["classifier"]: r for r in classify([fs], list(native), "quick", 3, progress=False)}
    for c in native:
        assert recs[c]["test_accuracy"] > 0.5
        assert abs(recs[c]["test_accuracy"] - plain[c]["test_accuracy"]) <= 2 / 60  # same model, other arrays


# --- bad input ---------------------------------------------------------------------------------------

def test_non_finite_store(tmp_path, runner):
    X, y = blobs(40)
    X[7, 3] = np.nan
    s = write_store(tmp_path / "nan", X, y, *blobs(20, seed=1))
    r = run_cli(runner, "classify", "--features", s, "--out", tmp_path / "o")
    assert_one_line_error(r, "X_train.npy has non-finite values (row 7")


def test_store_of_another_dataset_or_other_rows(tmp_path, runner, data_dir, store):
    other = write_store(tmp_path / "cifar", *blobs(40), *blobs(20, seed=1), dataset="cifar10")
    r = run_cli(runner, "classify", "--features", other, "--out", tmp_path / "o")
    assert_one_line_error(r, "holds cifar10 features, not fashion-mnist")
    fewer = write_store(tmp_path / "fewer", *blobs(150), *blobs(60, seed=1))
    r = run_cli(runner, "classify", "--features", f"raw,{fewer}", "--data-dir", data_dir, "--out", tmp_path / "o")
    assert_one_line_error(r, "does not match raw", "different data")
    assert not (tmp_path / "o").exists()


def test_unknown_classifier_empty_grid_and_cv(tmp_path, runner, store, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no features/ here: a name must not find a real store in the checkout
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda,xgboost", "--out", tmp_path / "o")
    assert_one_line_error(r, "unknown classifier xgboost", "lda,qda,logreg")
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"logreg": {"clf__C": []}}))
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "logreg", "--grid", grid,
                "--out", tmp_path / "o")
    assert_one_line_error(r, "leaves nothing to search")
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--cv", 30, "--out", tmp_path / "o")
    assert_one_line_error(r, "--cv 30 is larger than the smallest class", "lower --cv")
    r = run_cli(runner, "classify", "--features", "resnet", "--out", tmp_path / "o")
    assert_one_line_error(r, "no feature store for 'resnet'", "pipeline extract")



@pytest.mark.parametrize("grid, says", [
    ({"lda": {"clf__tol": [1e-4]}, "svc": {"clf__C": [1.0]}}, "grids for 'svc' would not be used: svc not among "
                                                               "--classifiers lda"),
    ({"lda": {"clf__tol": [1e-4]}, "xgboost": {"eta": [0.1]}}, "grids for 'xgboost' would not be used: not "
                                                               "classifiers"),
    ({"lda": {"clf__tolerance": [1e-4]}}, "lda has no parameter 'clf__tolerance'"),
])
def test_grid_keys_that_would_be_ignored_are_refused(tmp_path, runner, store, grid, says):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(grid))
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--grid", path, "--cv", 2,
                "--out", tmp_path / "o")
    assert_one_line_error(r, "--grid: ", says)
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("classifier", ["qda", "lda", "knn"])
@pytest.mark.parametrize("cv", [0, 1, -3])
def test_fewer_than_two_folds_is_one_line_for_every_classifier(tmp_path, runner, store, classifier, cv):
    r = run_cli(runner, "classify", "--features", store, "--classifiers", classifier, "--cv", cv,
                "--out", tmp_path / "o")
    assert_one_line_error(r, f"--cv {cv}: cross-validation needs at least 2 folds")

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_without_cuml(store):
    """The path a CUDA user without cuML gets: array-API on CUDA tensors where it exists, labelled per record."""
    fs = load_feature_set(str(store), "fashion-mnist")
    models = {}
    recs = {r["classifier"]: r for r in classify([fs], ["lda", "logreg", "rf"], "default", 3,
                                                 backend=make_backend("cuda", cuml=False), progress=False,
                                                 models=models)}
    assert recs["lda"]["backend"] == recs["logreg"]["backend"] == "sklearn-array-api-cuda"
    assert models[(fs.name, "logreg")][-1].coef_.device.type == "cuda"  # the fitted object, not the label
    assert recs["rf"]["backend"] == "sklearn-cpu" and recs["rf"]["device"] == "cpu"
    assert all(r["test_accuracy"] > 0.5 and r["failed_fits"] == 0 for r in recs.values())


def test_the_results_tables_order_holds_every_classifier_in_spec_order():
    """results.ORDER (the table order; results cannot import classical) must list the classifier specs."""
    from pipeline.results import ORDER

    assert ORDER[:len(CLASSIFIERS)] == tuple(CLASSIFIERS) and len(set(ORDER)) == len(ORDER)


def test_two_stores_of_one_backbone_are_two_feature_sets_named_by_their_recipes(tmp_path, runner):
    """Issue 42 row 5: stores of one backbone at 32 and 64 px were one column, the second record and model
    over the first. Each is now its own feature set, named by what differs; two of one recipe are refused."""
    (X, y), (Xt, yt) = blobs(60), blobs(30, seed=1)
    st1 = write_store(tmp_path / "st1", X, y, Xt, yt, image_size=32)
    st2 = write_store(tmp_path / "st2", X + 1, y, Xt + 1, yt, image_size=64)
    out = tmp_path / "o"
    r = run_cli(runner, "classify", "--features", f"{st1},{st2}", "--classifiers", "lda", "--grid", "quick",
                "--out", out)
    assert r.exit_code == 0, r.output
    recs = json.loads((out / "results.json").read_text())
    assert sorted(rec["feature_set"] for rec in recs) == ["toynet (32 px)", "toynet (64 px)"]
    assert sorted(p.name for p in (out / "models").glob("*.skops")) == ["toynet-32-px_lda.skops",
                                                                          "toynet-64-px_lda.skops"]
    twin = shutil.copytree(st1, tmp_path / "twin")
    r = run_cli(runner, "classify", "--features", f"{st1},{twin}", "--out", tmp_path / "o2")
    assert_one_line_error(r, "hold toynet features of one recipe; pass one of them")
    assert not (tmp_path / "o2").exists()


def test_a_model_the_full_disk_could_not_save_stops_the_run_in_one_line(tmp_path, runner, store, monkeypatch):
    """Issue 42 row 7: a model that could not be written for a full disk was logged and the run went on to
    exit 0, its report claiming every model saved. The disk's error stops it; the first model and its record
    stay, the second leaves no record, no model and no temporary file."""
    import errno
    import os

    import skops.io

    real, calls = skops.io.dump, []

    def full_on_second(est, f, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(est, f, **kw)

    monkeypatch.setattr(skops.io, "dump", full_on_second)
    out = tmp_path / "o"
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda,knn", "--grid", "quick",
                "--out", out)
    last = r.stderr.strip().splitlines()[-1]  # after the first model's result line
    assert r.exit_code == 1 and "Traceback" not in r.output and last.startswith("error: writing"), r.output
    assert "toynet_knn.skops: No space left on device (disk full)" in last
    assert [rec["classifier"] for rec in json.loads((out / "results.json").read_text())] == ["lda"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["toynet_lda.json", "toynet_lda.skops"]


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_is_checked_when_the_features_are_a_store_path(tmp_path, runner, store, limit):
    """Issue 42 row 14: with a store path, --limit 0 was a traceback and --limit -3 silently dropped the last
    three rows of each split."""
    r = run_cli(runner, "classify", "--features", store, "--limit", limit, "--out", tmp_path / "o")
    assert_one_line_error(r, f"--limit must be a positive number of images, not {limit}")
    assert not (tmp_path / "o").exists()


def test_a_backbone_name_with_limit_finds_the_runs_own_store(tmp_path, runner, data_dir, monkeypatch):
    """Issue 42 row 19: `pipeline run --limit 1000` writes features/<dataset>/<backbone>-first1000, and a bare
    `classify --features raw,<backbone> --limit 1000` did not find it: its advice was a full extraction."""
    from pipeline.store.featuresets import load_feature_set

    monkeypatch.chdir(tmp_path)
    raw = load_feature_set("raw", "fashion-mnist", data_dir, limit=20)
    first = write_store(tmp_path / "features" / "fashion-mnist" / "toynet-first20", *blobs(20), *blobs(20, seed=1))
    r = run_cli(runner, "classify", "--features", "toynet", "--limit", 30, "--out", tmp_path / "o")
    assert_one_line_error(r, "toynet-first30 or features/fashion-mnist/toynet",
                          "pipeline extract --dataset fashion-mnist --backbone toynet --limit 30")
    np.save(first / "y_train.npy", raw.y_train)  # the run's store of these 20 images
    np.save(first / "y_test.npy", raw.y_test)
    meta = json.loads((first / "meta.json").read_text())
    meta["dataset"]["labels_sha256"] = {s: raw.meta["dataset"]["labels_sha256"][s] for s in ("train", "test")}
    (first / "meta.json").write_text(json.dumps(meta))
    r = run_cli(runner, "project", "--features", "raw,toynet", "--data-dir", data_dir, "--limit", 20,
                "--methods", "pca", "--out", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "maps" / "toynet_pca.json").read_text())["rows"] == 40  # the run's store
    # without --out, the run's own report folder too: the full study's (README's follow-on met a committed
    # reports/fashion-mnist of 70,000 images and was refused)
    r = run_cli(runner, "project", "--features", "raw,toynet", "--data-dir", data_dir, "--limit", 20,
                "--methods", "pca")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reports" / "fashion-mnist-first20" / "maps" / "toynet_pca.json").is_file()
    assert not (tmp_path / "reports" / "fashion-mnist").exists()
