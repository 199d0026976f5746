"""`pipeline evaluate` and `predict` on a folder print no library warnings between their progress lines, with
either engine. A warnings filter the code sets is process-wide and not thread-safe: the image decoder's
`catch_warnings` in the prefetch thread undid the OpenVINO conversion's "ignore" (torch's TracerWarning and
jit FutureWarnings on the terminal in about 1 run of 5). So these tests drop every "ignore" filter pipeline's
own code asks for: nothing of pipeline's may need one."""
from __future__ import annotations

import os
import sys
import warnings
from unittest import mock

import pytest
from helpers import SHAPES, draw, run_cli, shapes_folder

ENGINES = {"openvino": ["--engine", "openvino"], "torch": ["--engine", "torch", "--precision", "fp32"]}


@pytest.fixture(scope="module", params=list(ENGINES))
def study(request, tmp_path_factory):
    """A folder study with saved models (raw pixels and a random-weight ResNet-18 at 48 px) from an extraction
    with each engine (OpenVINO: its automatic precision, as by default on the CPU)."""
    from click.testing import CliRunner

    if request.param == "openvino":
        pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp(f"study-{request.param}")
    shapes_folder(root / "shapes", 6)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        r = run_cli(CliRunner(), "extract", "--dataset", "folder", "--data-dir", "shapes", "--backbone", "resnet18",
                    "--weights", "none", "--image-size", 48, "--device", "cpu", "--batch-size", 8,
                    *ENGINES[request.param])
        assert r.exit_code == 0, r.output
        r = run_cli(CliRunner(), "classify", "--dataset", "folder", "--data-dir", "shapes", "--features",
                    "raw,resnet18", "--raw-size", 8, "--classifiers", "lda", "--grid", "quick", "--n-jobs", 1,
                    "--out", "study")
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(cwd)
    return root / "study"


def gray_folder(root, n_per_class=4):
    """Grayscale images only: the backbone's graph for 1-channel input is made while the images decode."""
    import numpy as np

    rng = np.random.default_rng(7)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(n_per_class):
            draw(shape, rng, size=(70, 60)).convert("L").save(root / shape / f"{i}.png")
    return root


def no_ignore_filters():
    """warnings.simplefilter / filterwarnings with every "ignore" that pipeline's own code asks for dropped
    (libraries' own filters kept, and pipeline's others: the image decoder's decompression-bomb error)."""
    simple, full = warnings.simplefilter, warnings.filterwarnings

    def unless_ignored_by_pipeline(set_filter):
        def f(action, *a, **k):
            if action == "ignore" and sys._getframe(1).f_globals.get("__name__", "").startswith("pipeline"):
                return None
            return set_filter(action, *a, **k)

        return f

    return mock.patch.multiple(warnings, simplefilter=unless_ignored_by_pipeline(simple),
                               filterwarnings=unless_ignored_by_pipeline(full))


@pytest.mark.filterwarnings("error")
@pytest.mark.timeout(300)
def test_evaluate_and_predict_print_no_warnings(study, tmp_path, runner):
    wild = shapes_folder(tmp_path / "wild", 3, seed=3, size=(90, 70))  # colour and grayscale mixed
    gray = gray_folder(tmp_path / "gray")
    with no_ignore_filters():
        r = run_cli(runner, "evaluate", "--folder", wild, "--out", study)
        assert r.exit_code == 0, r.output
        assert "Warning" not in r.output, r.output
        for folder in (gray, wild):
            r = run_cli(runner, "predict", "--model", study / "models" / "resnet18_lda.skops", folder, "--out",
                        tmp_path / "p.csv", "--overwrite")
            assert r.exit_code == 0, r.output
            assert "Warning" not in r.output, r.output
        r = run_cli(runner, "evaluate", "--folder", gray, "--out", study)
        assert r.exit_code == 0, r.output
        assert "Warning" not in r.output, r.output
