"""benchmarks/bench_gpu.py end to end in its --smoke mode (tiny synthetic data, whatever device is here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_gpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    stages = {r["stage"] for r in got["rows"]}
    assert stages == {"load", "extract", "classify", "maps"}
    loops = [r for r in got["rows"] if r["stage"] == "extract" and " loop " in r["what"]]
    assert [r["what"].split()[0] for r in loops] == ["resnet18", "efficientnet_lite0"]
    assert all(r["img_per_s"] > 0 for r in loops)
    per_clf = [r for r in got["rows"] if r["stage"] == "classify" and " all " not in r["what"]]
    assert len(per_clf) == 3 * 7  # raw + two embeddings, seven classifiers, each with where it ran
    assert all(r["backend"] and r["device"] for r in per_clf)
    whole, = (r for r in got["rows"] if r["stage"] == "classify" and " all " in r["what"])
    ran = {d for r in per_clf for d in r["device"].split(" + ")}  # it names the devices its records ran on
    assert set(whole["device"].split(" + ")) == ran, (whole, ran)
    assert got["total_seconds"] > 0 and got["hardware"] in res.stdout and got["complete"] is True

    # --compare: the run against itself (as an "old" run) and against CPU records made from its own numbers
    records = tmp_path / "results.json"
    fits = [r["what"].split()[:2] + [float(r["what"].split("(test ")[1].rstrip(")"))] for r in per_clf]
    records.write_text(json.dumps([{"feature_set": f, "classifier": c, "test_accuracy": a + (0.01 if c == "lda" else 0)}
                                   for f, c, a in fits if f == "raw"]))
    cmp = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--compare", str(out), "--against",
                          str(out), "--records", str(records)], capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    assert "| total |" in cmp.stdout and "1.0×" in cmp.stdout
    assert "| raw | lda |" in cmp.stdout and "-1.00 (beyond 0.3)" in cmp.stdout
    assert "# 6 of 7 accuracies within 0.3 points of the CPU records; beyond: [('raw', 'lda')]" in cmp.stdout
    # a run cut short by its time limit (the file is written row by row) still compares, and says so
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps({**got, "complete": False, "total_seconds": None,
                               "rows": [r for r in got["rows"] if r["stage"] != "maps"]}))
    cmp = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--compare", str(cut), "--against",
                          str(out)], capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0 and "(cut short: the rows it finished)" in cmp.stdout, cmp.stderr[-3000:]
