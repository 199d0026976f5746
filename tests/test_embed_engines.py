"""The OpenVINO engine: bounded waits, engines built one after another, usage telemetry declined."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from helpers import assert_one_line_error, fast_args, run_cli


class _Stuck:
    """An infer request that never finishes (as the one seen hanging in CI)."""

    def infer(self, inputs, share_inputs=True):
        threading.Event().wait(60)


def test_openvino_waits_are_bounded(data, tmp_path, monkeypatch, runner):
    pytest.importorskip("openvino")
    from pipeline.embed import engines

    monkeypatch.setattr(engines, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(engines.OpenVINOEngine, "_new_request", lambda self, compiled: _Stuck())
    r = run_cli(runner, "extract", *fast_args(precision="bf16", batch_size=None), "--engine", "openvino",
                "--data-dir", data,
                "--out", tmp_path / "s")
    assert_one_line_error(r, "OpenVINO engine did not finish a request", "--engine torch")


def test_openvino_engines_built_one_after_another_do_not_deadlock(tmp_path):
    """Engines freed while the next one runs (as `pipeline evaluate` does per feature set and variant): with
    AsyncInferQueue callbacks this deadlocked on the GIL; each run here finishes, in a child process with a
    bound so a regression fails instead of hanging the suite."""
    pytest.importorskip("openvino")
    code = ("import gc, numpy as np\nfrom pipeline.embed.backbones import build_backbone\n"
            "from pipeline.embed.engines import make_engine\n"
            # the graph's export and conversion (most of an engine's build, and no part of its life) done once;
            # each engine still compiles its own model, runs its own requests and is freed
            "import torch\nfrom pipeline.embed.engines import _import_openvino\n"
            "def once(f):\n    made = []\n"
            "    return lambda *a, **k: made[0] if made else made.append(f(*a, **k)) or made[0]\n"
            "ov = _import_openvino()\n"
            "ov.convert_model, torch.export.export = once(ov.convert_model), once(torch.export.export)\n"
            "x = np.random.default_rng(0).integers(0, 255, (64, 3, 40, 40), dtype=np.uint8)\n"
            "for i in range(12):\n"
            "    eng = make_engine(build_backbone('resnet18', 'none', image_size=32), 'cpu', 'fp32', 'openvino')\n"
            "    out = np.concatenate(list(eng.map(iter([x[:40], x[40:]]))))\n"
            "    assert out.shape == (64, 512), out.shape\n"
            "    del eng; gc.collect()\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_openvino_usage_telemetry_is_declined():
    """OpenVINO's import and model conversion would send usage events (from a forked process); pipeline's
    engine declines them, and leaves the environment as it was."""
    pytest.importorskip("openvino")
    code = ("import os, torch\nfrom pipeline.embed.backbones import build_backbone\n"
            "from pipeline.embed.engines import make_engine\n"
            "make_engine(build_backbone('resnet18', 'none', image_size=32), 'cpu', 'fp32', 'openvino')\n"
            "import openvino_telemetry as tm\nprint(tm.Telemetry().consent, os.environ.get('CI'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "CI"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "None"]



def test_converted_models_are_cached_by_recipe_and_give_the_same_features(tmp_path, monkeypatch):
    """The second engine of a recipe reads the converted model from the cache (a skipped extract, predict and
    evaluate no longer convert for seconds), says so, and embeds bit-identically; other weights are another
    entry; a cache that cannot be written costs only the saving, and is said."""
    pytest.importorskip("openvino")
    import numpy as np
    import torch

    from pipeline.embed import engines
    from pipeline.embed.backbones import build_backbone

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    converts = []
    real = engines.OpenVINOEngine._convert
    monkeypatch.setattr(engines.OpenVINOEngine, "_convert", lambda self, c: converts.append(c) or real(self, c))
    batch = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)

    def embed(bb):
        eng = engines.make_engine(bb, "cpu", "bf16", "openvino", channels=1)
        return eng.describe()["converted_model"], np.concatenate(list(eng.map([batch])))

    how, first = embed(build_backbone("resnet18", "none", None, 32))
    assert how == {"1": "made"} and converts == [1]
    how, again = embed(build_backbone("resnet18", "none", None, 32))
    assert how == {"1": "cached"} and converts == [1]
    np.testing.assert_array_equal(first, again)
    other = build_backbone("resnet18", "none", None, 32)
    with torch.no_grad():
        next(other.model.parameters()).mul_(2)  # same name and shape, other weights: never the cached model
    how, _ = embed(other)
    assert how == {"1": "made"} and converts == [1, 1]
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 2

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a folder")
    how, unsaved = embed(build_backbone("resnet18", "none", None, 32))
    assert how["1"].startswith("made, not cached (") and converts == [1, 1, 1]
    np.testing.assert_array_equal(unsaved, first)
