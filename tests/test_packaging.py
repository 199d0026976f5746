"""Optional extras: a feature whose library is not installed says which install it needs, before any work."""
from __future__ import annotations

import tomllib
from pathlib import Path

from helpers import assert_one_line_error, make_idx_dir, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_map_library_is_one_line_before_any_work(tmp_path, runner, monkeypatch):
    from pipeline.maps import methods

    real = methods.importable
    monkeypatch.setattr(methods, "importable", lambda m: m != "umap" and real(m))
    monkeypatch.chdir(tmp_path)
    data = make_idx_dir(tmp_path / "fm", n_train=30, n_test=10)
    r = run_cli(runner, "run", "--data-dir", data, "--weights", "none", "--limit", 20, "--grid", "quick")
    assert_one_line_error(r, "the UMAP map needs `pip install umap-learn`", "transfer-workbench[maps]", "--methods pca")
    assert not (tmp_path / "features").exists() and not (tmp_path / "reports").exists()


def test_without_openvino_auto_uses_torch_and_asking_for_it_is_one_line(tmp_path, runner, monkeypatch):
    from pipeline.embed import engines
    from pipeline.embed.backbones import build_backbone

    monkeypatch.setattr(engines, "_openvino_available", lambda: False)
    bb = build_backbone("resnet18", "none", image_size=32)
    assert engines.make_engine(bb, "cpu", "bf16").describe()["engine"] == "torch"
    data = make_idx_dir(tmp_path / "fm", n_train=10, n_test=5)
    r = run_cli(runner, "extract", "--data-dir", data, "--weights", "none", "--engine", "openvino",
                "--precision", "bf16", "--device", "cpu", "--out", tmp_path / "s")
    assert_one_line_error(r, "--engine openvino needs `pip install openvino`", "transfer-workbench[openvino]")


def test_declared_python_matches_what_the_dependencies_need():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"].startswith(">=3.11")  # scikit-learn >= 1.9 requires Python >= 3.11
    assert any(d.startswith("scikit-learn>=1.9") for d in meta["dependencies"])
    lock = (ROOT / "uv.lock").read_text()
    assert 'requires-python = ">=3.11"' in lock  # the committed lock was made from this pyproject


def test_the_installed_command_runs_in_a_fresh_process():
    """The `pipeline` script the install made (other tests call the CLI in-process or from a preloaded fork)."""
    import shutil
    import subprocess
    import sys

    script = shutil.which("pipeline", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "pipeline.cli"]  # an install without scripts
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[:4] == ["extract", "classify", "curve", "project"]  # data-flow order, not alphabetical
