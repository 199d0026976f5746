"""Building the OpenVINO engine: converting the backbone (torch.export + convert_model) against reading the
converted model from the cache (`pipeline/embed/graphcache.py`), side by side in one run, each in a fresh
process so that neither finds the other's imports warm; seconds and the ratio, the CPU named.

    python benchmarks/bench_engine_build.py [--backbones resnet18,efficientnet_lite0] [--repeats 2]

A skipped extract, `predict`, `evaluate`, the audit's pixel check and `ImageEmbedder.fit` each build one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.hardware import cpu_name  # noqa: E402

BUILD = """
import json, sys, time
from pipeline.embed.backbones import build_backbone
from pipeline.embed.engines import make_engine
bb = build_backbone(sys.argv[1], "none", None, None)
t = time.perf_counter()
eng = make_engine(bb, "cpu", "auto", "openvino", channels=1)
print(json.dumps({"seconds": time.perf_counter() - t, "how": eng.describe()["converted_model"]["1"]}))
"""


def build(backbone: str, cache: str) -> dict:
    env = {**__import__("os").environ, "PIPELINE_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", BUILD, backbone], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="resnet18,efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print(f"CPU: {cpu_name()}; engine build (make_engine, 1-channel input, default image size), random weights")
    print(f"{'backbone':<20} {'converted s':>12} {'cached s':>9} {'ratio':>6}")
    for name in a.backbones.split(","):
        made, cached = [], []
        for _ in range(a.repeats):
            with tempfile.TemporaryDirectory() as cache:
                m, c = build(name, cache), build(name, cache)
                assert (m["how"], c["how"]) == ("made", "cached"), (m, c)
                made.append(m["seconds"])
                cached.append(c["seconds"])
        print(f"{name:<20} {min(made):12.2f} {min(cached):9.2f} {min(made) / min(cached):6.1f}x", flush=True)


if __name__ == "__main__":
    main()
