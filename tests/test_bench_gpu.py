"""benchmarks/bench_gpu.py end to end in its --smoke mode (tiny synthetic data, whatever device is here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    for row in (r for r in got["rows"] if r["stage"] == "classify" and " all " in r["what"]):
        name = row["what"].split(" all ")[0]  # the "all" row names the devices its classifiers ran on
        ran = {d for r in per_clf if r["what"].startswith(name + " ") for d in r["device"].split(" + ")}
        assert set(row["device"].split(" + ")) == ran, (row, ran)
    assert got["total_seconds"] > 0 and got["hardware"] in res.stdout
