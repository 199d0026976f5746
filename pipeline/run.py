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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.classical.backends import make_backend
from pipeline.classical.specs import DEFAULT_CLASSIFIERS, DEFAULT_CV, DEFAULT_GRID, PRESETS, check_folds
from pipeline.data import DATASET, TEST_FRACTION, dataset_slug
from pipeline.data.domain import domain_for
from pipeline.data.folder import refuse_output_inside
from pipeline.embed.request import BACKBONE, WEIGHTS, ExtractRequest, default_store, native_size, run_suffix
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, folder_lock, read_json
from pipeline.maps.methods import DEFAULT_METHODS, check_methods
from pipeline.models.heads import HEADS, HeadSpec
from pipeline.results import read_results, refuse_foreign_tables, report_dir, write_results
from pipeline.store.featuresets import RAW_SIZE
from pipeline.train.config import (
    FINETUNE_BATCH,
    FINETUNE_EPOCHS,
    HEAD_BATCH,
    HEAD_EPOCHS,
    FinetuneRequest,
    TrainConfig,
    TrainRequest,
)


@dataclass
class RunConfig:
    """What `pipeline run` does: the dataset, the backbone, the search, the maps, and where it all goes.
    Defaults are each stage's own (read from where they live)."""
    dataset: str = DATASET
    data_dir: str | None = None
    backbone: str = BACKBONE
    weights: str = WEIGHTS
    limit: int | None = None
    image_size: int | None = None  # None: the backbone's native size
    precision: str = "auto"  # the extraction's (int8: the CPU, calibrated); not auto: its own folders
    raw_size: int = RAW_SIZE  # an image folder's raw pixels: resized to this square
    test_fraction: float = TEST_FRACTION  # an image folder without test/: this share of each class held out
    grid: str = DEFAULT_GRID
    cv: int = DEFAULT_CV
    classifiers: list[str] | None = None  # None: DEFAULT_CLASSIFIERS
    methods: tuple[str, ...] = DEFAULT_METHODS
    device: str = "auto"
    n_jobs: int | None = None
    dask: str | None = None  # a Dask scheduler: extraction in shards and the grid search run on its workers
    out: Path | None = None
    store: Path | None = None
    wild: str | None = None  # a folder of class sub-folders: the "in the wild" test as a last stage
    match_domain: bool = False
    overwrite: bool = False  # replace a finished store made with other settings (the folder changed)
    train: tuple[str, ...] = ()  # heads trained on the embeddings: linear, mlp
    finetune: tuple[str, ...] = ()  # fine-tuning runs: unfreeze levels 0..N, all, or scratch
    finetune_image_size: int | None = None
    finetune_epochs: int = FINETUNE_EPOCHS
    finetune_minutes: float | None = None  # --max-minutes of each fine-tuning run

    @property
    def size(self) -> int:
        """The backbone's input size: the one asked for, else its native size."""
        return native_size(self.backbone) if self.image_size is None else self.image_size

    def paths(self) -> tuple[Path, Path]:
        """(store, report folder): the given ones, else the defaults. A --limit run (or another --image-size)
        gets its own, so it never collides with the full run's; an image folder is named after its
        directory (folder-<name>)."""
        store = default_store(self.dataset, self.backbone, self.limit, self.image_size, self.data_dir,
                              self.precision)
        out = report_dir(dataset_slug(self.dataset, self.data_dir),
                         run_suffix(self.limit, self.image_size, self.backbone, self.precision))
        return Path(self.store or store), Path(self.out or out)

    def extract_request(self, store: Path) -> ExtractRequest:
        return ExtractRequest(dataset=self.dataset, data_dir=self.data_dir, limit=self.limit,
                              test_fraction=self.test_fraction, backbone=self.backbone, weights=self.weights,
                              image_size=self.image_size, precision=self.precision, device=self.device, out=store,
                              overwrite=self.overwrite,
                              dask=self.dask)

    def finetune_request(self, level: str, out: Path) -> FinetuneRequest:
        """`--finetune LEVEL` as a fine-tuning request: LEVEL is an unfreeze level (0..N, all) of the run's
        backbone and weights, or `scratch` (all blocks, random init)."""
        scratch = level == "scratch"
        return FinetuneRequest(dataset=self.dataset, data_dir=self.data_dir, limit=self.limit,
                               test_fraction=self.test_fraction, backbone=self.backbone,
                               weights="none" if scratch else self.weights, unfreeze="all" if scratch else level,
                               image_size=self.finetune_image_size,
                               train=TrainConfig(epochs=self.finetune_epochs, batch_size=FINETUNE_BATCH,
                                                 max_minutes=self.finetune_minutes, device=self.device), out=out)

    def check(self) -> None:
        """Every refusal `pipeline run` can make before any work (the map libraries: in `run`)."""
        if self.grid not in PRESETS:
            raise PipelineError(f"--grid {self.grid!r}: `pipeline run` takes a preset ({', '.join(PRESETS)}); "
                                f"use `pipeline classify --grid FILE.json` for custom grids")
        check_folds(self.cv)
        if self.match_domain:
            if not self.wild:
                raise PipelineError("--match-domain applies to the in-the-wild test: give --wild DIR too")
            domain_for(self.dataset)
        if self.wild and not Path(self.wild).is_dir():
            raise PipelineError(f"--wild {self.wild}: not a folder; expected {self.wild}/<class>/<images>")
        if self.dataset == "folder":
            store, out = self.paths()
            refuse_output_inside(store, self.data_dir, "the store", "run pipeline from outside the image folder")
            refuse_output_inside(out, self.data_dir)
        if self.wild:
            refuse_output_inside(self.paths()[1], self.wild)
        bad = [h for h in self.train if h not in HEADS]
        if bad:
            raise PipelineError(f"--train {','.join(bad)}: heads are {', '.join(HEADS)}")
        bad = [f for f in self.finetune if not (f in ("all", "scratch") or f.isdigit())]
        if bad:
            raise PipelineError(f"--finetune {','.join(bad)}: give unfreeze levels (0, 1, 2, ..., all) or scratch")


def what_ran(store: Path, out: Path) -> dict:
    """Where the run's work actually ran, read from what each stage wrote (not the backend chosen, which
    run.json's `backend` names): the store's engine, precision and device, each classifier record's
    backend and device (every step of its pipeline), each map's implementation."""
    meta = read_json(Path(store) / "meta.json") or {}
    engine, device = meta.get("engine") or {}, meta.get("device") or {}
    maps = [read_json(p) or {} for p in sorted((Path(out) / "maps").glob("*.json"))]
    return {"extract": {"engine": engine.get("engine"), "precision": meta.get("precision"),
                        "device": device.get("type"), "device_name": device.get("name")},
            "classify": {f"{r['feature_set']} {r['classifier']}": f"{r['backend']} on {r.get('device', '?')}"
                         for r in read_results(out)},
            "maps": {f"{m['feature_set']} {m['method']}": m["implementation"] for m in maps
                     if {"feature_set", "method", "implementation"} <= set(m)}}


def run(cfg: RunConfig, command: str | None = None,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    cfg.check()
    backend = make_backend(cfg.device)  # first: cuML must hook scikit-learn before it is imported
    from pipeline.classical import search as cls
    from pipeline.embed.extract import extract
    from pipeline.maps import project as proj
    from pipeline.report import write_report
    from pipeline.store.featuresets import check_comparable, load_feature_set

    check_methods(cfg.methods, backend)  # a missing map library is said now, not after the fits
    classifiers = list(cfg.classifiers or DEFAULT_CLASSIFIERS)
    store, out = cfg.paths()
    dataset, data_dir, limit, grid, cv = cfg.dataset, cfg.data_dir, cfg.limit, cfg.grid, cfg.cv
    # one writer per report folder and its maps, held through every stage (not taken hours later)
    with folder_lock(out, "pipeline run"), folder_lock(out / "maps", "pipeline run"):
        read_results(out)  # a damaged or foreign results file stops the run before any work
        refuse_foreign_tables(out)
        info = {"command": command,
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "stores": [str(store)],
                "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "backbone": cfg.backbone,
                "image_size": cfg.size, "limit": limit, "grid": grid, "cv": cv,
                "classifiers": classifiers, "methods": list(cfg.methods), "backend": backend.name, "out": str(out),
                "dask": cfg.dask,
                "wild": cfg.wild, "match_domain": cfg.match_domain, "train": list(cfg.train),
                "finetune": list(cfg.finetune), "stages": []}
        if cfg.finetune:
            info.update(finetune_image_size=cfg.finetune_image_size, finetune_epochs=cfg.finetune_epochs,
                        finetune_minutes=cfg.finetune_minutes)
        if dataset == "folder":
            info.update(raw_size=cfg.raw_size, test_fraction=cfg.test_fraction)
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
            r = extract(cfg.extract_request(store))
            state = {"complete": "skipped", "resume": "resumed", "new": "ran"}.get(r.state, r.state)
            if state == "skipped":
                return state, f"{r.path} already holds these embeddings"
            return state, f"{r.images:,} images embedded at {r.img_per_s:.0f} img/s"

        sets = []

        def do_classify():
            sets.extend([load_feature_set("raw", dataset, data_dir, limit, raw_size=cfg.raw_size,
                                          test_fraction=cfg.test_fraction),
                         load_feature_set(str(store), dataset)])
            check_comparable(sets)
            if cfg.wild:  # a wild folder whose names match no class is said now, not after the fits
                from pipeline.apply.evaluate import wild_folder

                wild_folder(cfg.wild, sets[0].classes)
            todo = {fs.name: cls.pending(out, fs, classifiers, grid, cv) for fs in sets}
            groups: dict[tuple, list] = {}  # sets with the same classifiers to do: one call, one progress bar
            for fs in sets:
                if todo[fs.name]:
                    groups.setdefault(tuple(todo[fs.name]), []).append(fs)
            for todo_c, group in groups.items():
                cls.classify(group, list(todo_c), grid, cv, backend, cfg.n_jobs, cfg.dask, out=out, log=log)
            n = sum(map(len, todo.values()))
            if not n:
                write_results(out, [])  # derived files (CSV, Markdown, figures) up to date after a crash
            return ("ran" if n else "skipped"), f"{n} of {len(sets) * len(classifiers)} (features, classifier) fits"

        def do_train():
            from pipeline.train.heads import pending, train_head

            todo = pending(out, sets[1], cfg.train)
            for h in todo:
                tc = TrainConfig(epochs=HEAD_EPOCHS, batch_size=HEAD_BATCH, device=cfg.device)
                train_head(sets[1], TrainRequest(HeadSpec(h), tc, out), log=log)
            return ("ran" if todo else "skipped"), f"{len(todo)} of {len(cfg.train)} heads trained on {sets[1].name}"

        def do_finetune():
            from pipeline.train.finetune import finetune

            done = {json.dumps(r.get("request"), sort_keys=True) for r in read_results(out)
                    if r["classifier"] == "finetune"}
            reqs = [cfg.finetune_request(level, out) for level in cfg.finetune]
            todo = [q for q in reqs if json.dumps(q.key(), sort_keys=True) not in done]
            for q in todo:
                finetune(q, log=log)
            return ("ran" if todo else "skipped"), f"{len(todo)} of {len(reqs)} fine-tuning runs"

        def do_galleries():
            from pipeline.apply.gallery import is_current, write_galleries

            if is_current(out, sets):
                return "skipped", "the galleries already show these models"
            try:
                path = write_galleries(out, sets, log)
            except PipelineError as e:  # optional (e.g. the images moved): said, and the run goes on
                log(f"galleries skipped: {e}")
                return "skipped", str(e)
            return ("ran", f"{path.name}: images behind the numbers") if path else ("skipped", "no saved models")

        def do_audit():
            from pipeline.audit import check as au
            from pipeline.hardware import importable

            if not importable("cleanlab"):  # optional, as maps.html is
                return "skipped", "cleanlab is not installed (pip install 'pipeline[audit]')"
            if au.is_current(out, sets[1]):
                return "skipped", "audit.json already checks these images and records"
            try:
                doc = au.audit(sets[1], out, cv=cv, device=cfg.device, n_jobs=cfg.n_jobs, log=log)
            except PipelineError as e:  # e.g. the images moved: said, and the run goes on
                log(f"audit skipped: {e}")
                return "skipped", str(e)
            c = doc["duplicates"]["counts"]
            return "ran", (f"{c['test_with_train_twin']:,} test images with a training twin, "
                           f"{len(doc['label_issues']['test']):,} test label issues, {doc['outliers']['count']:,} "
                           f"outliers")

        def do_project():
            n = sum(not proj.is_cached(out / "maps", fs, m, backend) for fs in sets for m in cfg.methods)
            proj.project(sets, cfg.methods, out / "maps", backend, cfg.n_jobs, log=log)
            return ("ran" if n else "skipped"), f"{n} of {len(sets) * len(cfg.methods)} maps computed"

        def do_map_view():
            from pipeline.apply import mapview
            from pipeline.maps.methods import importable

            if not importable("bokeh"):  # optional: the static report does not need it
                return "skipped", "Bokeh is not installed (pip install 'pipeline[maps]')"
            if mapview.is_current(out, sets):
                return "skipped", "maps.html is newer than its maps and predictions"
            try:
                path = mapview.write_map_view(out, sets, log=log)
            except PipelineError as e:
                log(f"maps.html skipped: {e}")
                return "skipped", str(e)
            return ("ran", f"{path.stat().st_size / 2**20:.1f} MB, opens offline") if path else ("skipped", "no maps")

        def do_evaluate():
            from pipeline.apply.evaluate import evaluate

            recs = evaluate(out, cfg.wild, cfg.match_domain, cfg.device, log=log, skip_done=True)
            if recs is None:
                return "skipped", f"every saved model already scored on {cfg.wild}"
            n = recs[0]["wild_n"]
            return "ran", f"{len(recs)} models on {n:,} images from {cfg.wild}" + (
                " (as they are and domain-matched)" if cfg.match_domain else "")

        stage("extract", do_extract)
        stage("classify", do_classify)
        if cfg.train:
            stage("train", do_train)
        if cfg.finetune:
            stage("finetune", do_finetune)
        stage("galleries", do_galleries)
        stage("audit", do_audit)
        stage("project", do_project)
        if cfg.wild:
            stage("evaluate", do_evaluate)
        stage("maps.html", do_map_view)  # after evaluate: the wild photos go on the maps too
        info["ran"] = what_ran(store, out)
        info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        stage("report", lambda: ("ran", ", ".join(p.name for p in write_report(out))))
        write_report(out)  # once more, so the report's provenance includes the report stage's own time
        return info
