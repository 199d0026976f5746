"""`pipeline run`: extract -> classify (raw and embeddings) -> project -> report, in one call.

Each stage skips what is already done with the same inputs (the store's config, the results' feature
fingerprint + grid + folds, the maps' fingerprint + parameters) and resumes what a crash left half done,
because every stage writes its outputs piece by piece and atomically. Times per stage go to out/run.json.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.store import atomic_write, folder_lock, read_json


def default_paths(dataset: str, backbone: str, limit: int | None, image_size: int = 224) -> tuple[Path, Path]:
    """(store, report folder). A --limit run (or another --image-size) gets its own, so it never collides
    with the full run's."""
    suffix = (f"-first{limit}" if limit else "") + (f"-{image_size}px" if image_size != 224 else "")
    return Path("features") / dataset / f"{backbone}{suffix}", Path("reports") / f"{dataset}{suffix}"


def run(dataset: str = "fashion-mnist", data_dir=None, backbone: str = "resnet18", weights: str = "imagenet",
        limit: int | None = None, grid: str = "default", cv: int = 3, classifiers=None, methods=("pca", "tsne", "umap"),
        device: str = "auto", n_jobs: int | None = None, out: Path | None = None, store: Path | None = None,
        command: str | None = None, image_size: int = 224,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    from pipeline.compute import make_backend

    check_grid(grid)
    backend = make_backend(device)  # first: cuML must hook scikit-learn before it is imported
    from pipeline import classify as cls
    from pipeline import project as proj
    from pipeline.extract import extract
    from pipeline.report import write_report

    proj.check_methods(methods, backend)  # a missing map library is said now, not after the fits
    classifiers = list(classifiers or cls.DEFAULT_CLASSIFIERS)
    d_store, d_out = default_paths(dataset, backbone, limit, image_size)
    store, out = Path(store or d_store), Path(out or d_out)
    # one writer per report folder and its maps, held through every stage (not taken hours later)
    with folder_lock(out, "pipeline run"), folder_lock(out / "maps", "pipeline run"):
        cls.read_results(out)  # a damaged or foreign results file stops the run before any work
        info = {"command": command,
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "stores": [str(store)],
                "dataset": dataset, "backbone": backbone, "image_size": image_size, "limit": limit, "grid": grid,
                "cv": cv,
                "classifiers": classifiers, "methods": list(methods), "backend": backend.name, "out": str(out),
                "stages": []}
        old = read_json(out / "run.json")  # keep the last runs' stage times: a skipping rerun must not erase them
        if old is not None:
            prev = old.pop("previous_runs", [])
            info["previous_runs"] = (prev if isinstance(prev, list) else [])[-9:] + [
                {k: old[k] for k in ("command", "started", "finished", "stages") if k in old}]

        def stage(name: str, fn: Callable[[], tuple[str, str]]):
            log(f"== {name}")
            t = time.perf_counter()
            state, detail = fn()
            info["stages"].append({"stage": name, "state": state, "seconds": round(time.perf_counter() - t, 1),
                                   "detail": detail})
            # after every stage: a crash keeps the times of the finished ones
            atomic_write(out / "run.json", json.dumps(info, indent=1))

        def do_extract():
            r = extract(dataset, backbone, data_dir=data_dir, limit=limit, weights=weights, device=device, out=store,
                        image_size=image_size)
            state = {"complete": "skipped", "resume": "resumed", "new": "ran"}.get(r.state, r.state)
            if state == "skipped":
                return state, f"{r.path} already holds these embeddings"
            return state, f"{r.images:,} images embedded at {r.img_per_s:.0f} img/s"

        sets = []

        def do_classify():
            sets.extend([cls.load_feature_set("raw", dataset, data_dir, limit),
                         cls.load_feature_set(str(store), dataset)])
            cls.check_comparable(sets)
            todo = {fs.name: cls.pending(out, fs, classifiers, grid, cv) for fs in sets}
            for fs in sets:
                if todo[fs.name]:
                    cls.classify([fs], todo[fs.name], grid, cv, backend, n_jobs, out=out, log=log)
            n = sum(map(len, todo.values()))
            if not n:
                cls.write_results(out, [])  # derived files (CSV, Markdown, figures) up to date after a crash
            return ("ran" if n else "skipped"), f"{n} of {len(sets) * len(classifiers)} (features, classifier) fits"

        def do_project():
            n = sum(not proj.is_cached(out / "maps", fs, m, backend) for fs in sets for m in methods)
            proj.project(sets, methods, out / "maps", backend, n_jobs, log=log)
            return ("ran" if n else "skipped"), f"{n} of {len(sets) * len(methods)} maps computed"

        stage("extract", do_extract)
        stage("classify", do_classify)
        stage("project", do_project)
        info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        stage("report", lambda: ("ran", ", ".join(p.name for p in write_report(out))))
        write_report(out)  # once more, so the report's provenance includes the report stage's own time
        return info


def check_grid(grid: str):
    from pipeline.classify import PRESETS

    if grid not in PRESETS:
        raise PipelineError(f"--grid {grid!r}: `pipeline run` takes a preset ({', '.join(PRESETS)}); use "
                            f"`pipeline classify --grid FILE.json` for custom grids")
