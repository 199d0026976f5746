"""benchmarks/bench_sweep.py end to end on tiny IDX files (raw pixels and ResNet-18 in fp32 and int8), then its
--redraw of the run's own sweep.json; and the CPU label every figure of it carries."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_idx_dir

from pipeline import hardware

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args, cwd):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sweep.py"), *map(str, args)],
                         capture_output=True, text=True, timeout=600, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_bench_sweep_runs_records_what_ran_and_redraws(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    idx_dir, out = make_idx_dir(tmp_path / "fmnist", n_train=200, n_test=60), tmp_path / "sweep"
    printed = _bench("--data-dir", idx_dir, "--train", 150, "--test", 60, "--configs", "raw,ResNet-18",
                     "--precisions", "fp32,int8", "--out", out, "--figure", tmp_path / "a.png", cwd=tmp_path)
    run = json.loads((out / "sweep.json").read_text())
    assert run["cpu"] == hardware.cpu_label() and run["cpu"] in printed
    assert [(r["config"], r.get("asked")) for r in run["rows"]] == [
        ("raw pixels", None), ("ResNet-18 (random)", "fp32"), ("ResNet-18 (random)", "int8")]
    for r in run["rows"][1:]:  # what ran, read back from each store's meta.json
        meta = json.loads((out / "stores" / f"ResNet-18_(random)-{r['asked']}" / "meta.json").read_text())
        assert r["precision"] == meta["precision"] and r["img_per_s"] == meta["throughput"]["img_per_s"] > 0
        assert 0 <= r["logreg"] <= 1 and 0 <= r["mlp"] <= 1
    assert (tmp_path / "a.png").stat().st_size > 10_000
    again = _bench("--redraw", out / "sweep.json", "--figure", tmp_path / "b.png", cwd=tmp_path)
    table = [line for line in again.splitlines() if line.startswith("| ResNet-18")]
    assert len(table) == 2 and all(line.endswith(f"{r['mlp']:.4f} |") for line, r in zip(table, run["rows"][1:]))
    assert (tmp_path / "b.png").stat().st_size > 10_000


@pytest.mark.parametrize("flags, isa", [({"avx2", "fma"}, "AVX2"), ({"avx2", "avx512f", "avx512_bf16"}, "AVX-512-bf16"),
                                        ({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "AMX"), (set(), None)])
def test_cpu_label_names_the_widest_vector_unit(monkeypatch, flags, isa):
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(hardware, "cores", lambda: 2)
    assert hardware.cpu_label() == (f"AMD EPYC with {isa}, 2 cores" if isa else "AMD EPYC, 2 cores")
    assert hardware.cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
