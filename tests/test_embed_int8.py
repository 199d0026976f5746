"""int8 extraction: NNCF calibration on a seeded sample of the training images, deterministic, cached by its
recipe, and a store that says int8 only where int8 kernels ran."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import FAST, assert_one_line_error, fast_args, run_cli

from pipeline import load_features
from pipeline.data import load_dataset
from pipeline.embed import int8 as int8_module
from pipeline.embed.extract import extract
from pipeline.embed.int8 import calibration_sample, recipe_key
from pipeline.embed.request import ExtractRequest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

INT8 = {**FAST, "precision": "int8", "engine": "openvino"}


def _extract(idx_dir, out, monkeypatch, cache, **changes):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(cache))
    extract(ExtractRequest(dataset="fashion-mnist", data_dir=str(idx_dir), backbone="resnet18",
                           out=out, **{**INT8, **changes}), progress=False, log=lambda m: None)
    return load_features(out)


def test_int8_calibration_is_deterministic_cached_and_recorded(idx_dir, tmp_path, monkeypatch):
    a = _extract(idx_dir, tmp_path / "a", monkeypatch, tmp_path / "cache-a")
    b = _extract(idx_dir, tmp_path / "b", monkeypatch, tmp_path / "cache-b")  # calibrated again, from scratch
    c = _extract(idx_dir, tmp_path / "c", monkeypatch, tmp_path / "cache-a")  # the first run's cached model
    for f in (b, c):
        np.testing.assert_array_equal(a.X_train, f.X_train)
        np.testing.assert_array_equal(a.X_test, f.X_test)
    graphs = [f.meta["engine"]["int8"]["graphs"]["3"] for f in (a, b, c)]
    assert [g["model"] for g in graphs] == ["calibrated", "calibrated", "cached"]
    assert len({g["recipe"] for g in graphs}) == 1
    cal = a.meta["engine"]["int8"]["calibration"]
    n_train = len(a.y_train)
    assert cal["split"] == "train" and cal["seed"] == 0 and cal["of_rows"] == n_train
    assert cal["images"] == min(int8_module.CALIBRATION_IMAGES, n_train)
    entry = tmp_path / "cache-a" / "int8" / graphs[0]["recipe"]
    assert json.loads((entry / "recipe.json").read_text())["calibration"] == cal
    # the label is what ran: int8 exactly where the compiled graph's layers run int8 kernels
    assert (a.meta["precision"] == "int8") == (graphs[0]["int8_layers"] > 0)
    assert graphs[0]["weighted_layers"] >= 20  # ResNet-18: 20 convolutions
    # int8 features stay close to fp32's
    ref = _extract(idx_dir, tmp_path / "fp32", monkeypatch, tmp_path / "cache-a", precision="fp32")
    cos = (a.X_test * ref.X_test).sum(1) / np.linalg.norm(a.X_test, axis=1) / np.linalg.norm(ref.X_test, axis=1)
    assert cos.min() > 0.8, cos.min()


def test_another_seed_is_another_recipe(idx_dir):
    ds = load_dataset("fashion-mnist", str(idx_dir))
    s0, s0_again, s1 = calibration_sample(ds, 8, 0), calibration_sample(ds, 8, 0), calibration_sample(ds, 8, 1)
    assert s0.sha256 == s0_again.sha256 != s1.sha256
    assert recipe_key({"calibration": s0.describe()}) != recipe_key({"calibration": s1.describe()})


def test_store_says_fp32_where_no_int8_kernel_ran(idx_dir, tmp_path, monkeypatch):
    """A CPU whose OpenVINO runs the quantized layers in f32: the store must not claim int8."""
    from pipeline.embed import engines

    monkeypatch.setattr(engines, "int8_layers", lambda compiled: (0, 21))
    f = _extract(idx_dir, tmp_path / "s", monkeypatch, tmp_path / "cache")
    assert f.meta["precision"] == "fp32"
    assert f.meta["engine"]["int8"]["graphs"]["3"]["int8_layers"] == 0


def test_int8_refusals_are_one_line(idx_dir, tmp_path, runner, monkeypatch):
    base = ["extract", "--data-dir", str(idx_dir), *fast_args(precision="int8"), "--out", str(tmp_path / "s")]
    r = run_cli(runner, *base, "--engine", "torch")
    assert_one_line_error(r, "--precision int8", "OpenVINO", "--engine")
    monkeypatch.setitem(sys.modules, "nncf", None)  # NNCF not installed
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "empty-cache"))
    r = run_cli(runner, *base)
    assert_one_line_error(r, "NNCF", "transfer-workbench[int8]")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_embedder_int8_calibrates_on_fit_images(idx_dir, tmp_path, monkeypatch):
    import pickle

    from pipeline import ImageEmbedder

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    images = load_dataset("fashion-mnist", str(idx_dir)).splits["train"].images
    emb = ImageEmbedder("resnet18", weights="none", image_size=48, precision="int8").fit(images)
    assert emb.engine_description_["int8"]["calibration"]["split"] == "fit"
    X = emb.transform(images[:5])
    again = pickle.loads(pickle.dumps(emb))  # the engine is rebuilt from the cached int8 model
    np.testing.assert_array_equal(again.transform(images[:5]), X)
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"^precision='int8' calibrates on the images given to fit: pass some$"):
        ImageEmbedder("resnet18", weights="none", image_size=48, precision="int8").fit()


def test_new_images_get_the_stores_int8_model_or_a_clear_fallback(idx_dir, tmp_path, monkeypatch):
    """predict / evaluate featurize new images with the store's own calibrated model (from the cache); without
    it they say so and use the automatic choice."""
    from pipeline.apply.featurize import _engine_for, build_for
    from pipeline.store.featuresets import load_feature_set

    f = _extract(idx_dir, tmp_path / "s", monkeypatch, tmp_path / "cache")
    recipe = load_feature_set(str(tmp_path / "s")).recipe
    logs: list[str] = []
    eng = _engine_for(recipe, build_for(recipe), "cpu", logs.append)
    d = eng.describe()
    assert d["precision"] == f.meta["precision"] and d["int8"]["graphs"]["3"]["model"] == "cached" and not logs
    test = load_dataset("fashion-mnist", str(idx_dir)).splits["test"].images
    np.testing.assert_allclose(np.concatenate(list(eng.map([test[:8], test[8:]]))), f.X_test, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "another-cache"))
    eng = _engine_for(recipe, build_for(recipe), "cpu", logs.append)
    assert "int8" not in eng.describe() and len(logs) == 1
    assert "not available here" in logs[0] and "not in the cache" in logs[0]


def test_run_in_int8_gets_its_own_store_and_report_folders():
    from pipeline.run import RunConfig

    auto_store, auto_report = RunConfig(backbone="efficientnet_lite0").paths()
    store, report = RunConfig(backbone="efficientnet_lite0", precision="int8").paths()
    assert store.parent == auto_store.parent and store.name == "efficientnet_lite0-int8"
    assert report.name == auto_report.name + "-int8"
    assert RunConfig(backbone="efficientnet_lite0", precision="int8").extract_request(store).precision == "int8"
