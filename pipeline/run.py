"""`pipeline run`: the whole study in one call, as a table of stages (STAGES) in data-flow order: extract ->
classify (raw pixels and embeddings) -> [train heads] -> [finetune] -> curve -> galleries -> audit -> project ->
[evaluate --wild] -> maps.html -> report.

Each stage is a module-level function of the study (`Study`) that returns its state and a detail line, and skips
what is already done with the same inputs (the store's config, the results' feature fingerprint + grid + folds,
the maps' fingerprint + parameters). Every stage writes its outputs piece by piece and atomically, so a crash
resumes where it stopped. One runner (`run_stage`) times each stage and writes out/run.json after it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.classical.backends import make_backend
from pipeline.classical.specs import DEFAULT_CLASSIFIERS, DEFAULT_CV, DEFAULT_GRID, PRESETS, check_folds
from pipeline.console import headed, split_names, stderr
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

    def __post_init__(self):  # the command line's comma-separated lists ("lda, qda") as lists
        if isinstance(self.classifiers, str):
            self.classifiers = split_names(self.classifiers)
        for name in ("methods", "train", "finetune"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, tuple(split_names(getattr(self, name))))

    @property
    def size(self) -> int:
        """The backbone's input size: the one asked for, else its native size."""
        return native_size(self.backbone) if self.image_size is None else self.image_size

    def paths(self) -> tuple[Path, Path]:
        """(store, report folder): the given ones, else the defaults. A --limit run (or another --image-size)
        gets its own, so it never collides with the full run's; an image folder is named after its
        directory and a hash of its path (folder-<name>-<hash>)."""
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


@dataclass
class Study:
    """What every stage of a run reads (the config, its store and report folder, the classical backend, the log)
    and what they hand on: the feature sets (raw pixels, then the embeddings) once classify has loaded them."""
    cfg: RunConfig
    store: Path
    out: Path
    backend: object
    classifiers: list[str]
    log: Callable[[str], None]
    sets: list = field(default_factory=list)

    @property
    def embeddings(self):
        return self.sets[1]


def extract_stage(s: Study) -> tuple[str, str]:
    from pipeline.embed.extract import extract

    r = extract(s.cfg.extract_request(s.store))
    state = {"complete": "skipped", "resume": "resumed", "new": "ran"}.get(r.state, r.state)
    if state == "skipped":
        return state, f"{r.path} already holds these embeddings"
    return state, f"{r.images:,} images embedded at {r.img_per_s:.0f} img/s"


def _load_sets(s: Study) -> None:
    """Raw pixels and the run's store as feature sets (comparable: the same images), into `s.sets`."""
    from pipeline.store.featuresets import check_comparable, load_feature_set

    cfg = s.cfg
    s.sets[:] = [load_feature_set("raw", cfg.dataset, cfg.data_dir, cfg.limit, raw_size=cfg.raw_size,
                                  test_fraction=cfg.test_fraction),
                 load_feature_set(str(s.store), cfg.dataset)]
    check_comparable(s.sets)
    if cfg.wild:  # a wild folder whose names match no class is said now, not after the fits
        from pipeline.apply.evaluate import wild_folder

        wild_folder(cfg.wild, s.sets[0].classes)


def classify_stage(s: Study) -> tuple[str, str]:
    from pipeline.classical import search

    _load_sets(s)
    cfg = s.cfg
    todo = {fs.name: search.pending(s.out, fs, s.classifiers, cfg.grid, cfg.cv) for fs in s.sets}
    groups: dict[tuple, list] = {}  # sets with the same classifiers to do: one call, one progress bar
    for fs in s.sets:
        if todo[fs.name]:
            groups.setdefault(tuple(todo[fs.name]), []).append(fs)
    for classifiers, group in groups.items():
        search.classify(group, list(classifiers), cfg.grid, cfg.cv, s.backend, cfg.n_jobs, cfg.dask, out=s.out,
                        log=s.log)
    n = sum(map(len, todo.values()))
    if not n:
        write_results(s.out, [])  # derived files (CSV, Markdown, figures) up to date after a crash
    return ("ran" if n else "skipped"), f"{n} of {len(s.sets) * len(s.classifiers)} (features, classifier) fits"


def train_stage(s: Study) -> tuple[str, str]:
    from pipeline.train.heads import pending, train_head

    todo = pending(s.out, s.embeddings, s.cfg.train)
    for head in todo:
        tc = TrainConfig(epochs=HEAD_EPOCHS, batch_size=HEAD_BATCH, device=s.cfg.device)
        train_head(s.embeddings, TrainRequest(HeadSpec(head), tc, s.out), log=s.log)
    return ("ran" if todo else "skipped"), f"{len(todo)} of {len(s.cfg.train)} heads trained on {s.embeddings.name}"


def finetune_stage(s: Study) -> tuple[str, str]:
    from pipeline.train.finetune import finetune

    done = {json.dumps(r.get("request"), sort_keys=True) for r in read_results(s.out)
            if r["classifier"] == "finetune"}
    reqs = [s.cfg.finetune_request(level, s.out) for level in s.cfg.finetune]
    todo = [q for q in reqs if json.dumps(q.key(), sort_keys=True) not in done]
    for q in todo:
        finetune(q, log=s.log)
    return ("ran" if todo else "skipped"), f"{len(todo)} of {len(reqs)} fine-tuning runs"


def curve_stage(s: Study) -> tuple[str, str]:
    from pipeline.classical import curve as lc

    n = len(lc.pending(s.out, s.sets, lc.CURVE_CLASSIFIERS))
    recs = lc.curve(s.sets, s.out, log=s.log, n_jobs=s.cfg.n_jobs)  # with nothing pending: only the figure
    found = [b for b in lc.break_even(recs) if b["k"]]
    said = "; ".join(f"{b['feature_set']} matches raw pixels' full-data accuracy at {b['grid_k']:,.0f} per class"
                     for b in found)
    return ("ran" if n else "skipped"), (f"{n} points" if n else "up to date") + (f" ({said})" if said else "")


def soft_fail(name: str, fn: Callable[[], tuple[str, str] | None], log: Callable[[str], None]):
    """The one rule for optional work (galleries, the audit, maps.html): a `PipelineError` (e.g. the images
    moved) is said as "<name> skipped: why" and returned as ("skipped", why); the run goes on."""
    try:
        return fn()
    except PipelineError as e:
        log(f"{name} skipped: {e}")
        return "skipped", str(e)


def refresh_galleries(out: Path, sets: list, log: Callable[[str], None] = stderr) -> None:
    """The galleries after `pipeline classify` made new models, unless they already show them (optional)."""
    from pipeline.apply.gallery import is_current, write_galleries

    soft_fail("galleries", lambda: None if is_current(out, sets) else write_galleries(out, sets, log), log)


def refresh_map_view(out: Path, sets: list, log: Callable[[str], None] = stderr, maps: Path | None = None) -> None:
    """maps.html after `pipeline project` drew a study's maps (optional)."""
    from pipeline.apply.mapview import write_map_view

    soft_fail("maps.html", lambda: write_map_view(out, sets, maps, log=log), log)


def galleries_stage(s: Study) -> tuple[str, str]:
    from pipeline.apply.gallery import is_current, write_galleries

    if is_current(s.out, s.sets):
        return "skipped", "the galleries already show these models"
    path = write_galleries(s.out, s.sets, s.log)
    return ("ran", f"{path.name}: images behind the numbers") if path else ("skipped", "no saved models")


def audit_stage(s: Study) -> tuple[str, str]:
    from pipeline.audit import check
    from pipeline.hardware import importable

    if not importable("cleanlab"):  # optional, as maps.html is
        return "skipped", "cleanlab is not installed (pip install 'transfer-workbench[audit]')"
    if check.is_current(s.out, s.embeddings):
        return "skipped", "audit.json already checks these images and records"
    doc = check.audit(s.embeddings, s.out, cv=s.cfg.cv, device=s.cfg.device, n_jobs=s.cfg.n_jobs, log=s.log)
    c = doc["duplicates"]["counts"]
    return "ran", (f"{c['test_with_train_twin']:,} test images with a training twin, "
                   f"{len(doc['label_issues']['test']):,} test label issues, {doc['outliers']['count']:,} outliers")


def project_stage(s: Study) -> tuple[str, str]:
    from pipeline.maps import project

    maps = s.out / "maps"
    n = sum(not project.is_cached(maps, fs, m, s.backend) for fs in s.sets for m in s.cfg.methods)
    project.project(s.sets, s.cfg.methods, maps, s.backend, s.cfg.n_jobs, log=s.log)
    return ("ran" if n else "skipped"), f"{n} of {len(s.sets) * len(s.cfg.methods)} maps computed"


def evaluate_stage(s: Study) -> tuple[str, str]:
    from pipeline.apply.evaluate import evaluate

    cfg = s.cfg
    recs = evaluate(s.out, cfg.wild, cfg.match_domain, cfg.device, log=s.log, skip_done=True)
    if recs is None:
        return "skipped", f"every saved model already scored on {cfg.wild}"
    return "ran", f"{len(recs)} models on {recs[0]['wild_n']:,} images from {cfg.wild}" + (
        " (as they are and domain-matched)" if cfg.match_domain else "")


def map_view_stage(s: Study) -> tuple[str, str]:
    from pipeline.apply import mapview
    from pipeline.maps.methods import importable

    if not importable("bokeh"):  # optional: the static report does not need it
        return "skipped", "Bokeh is not installed (pip install 'transfer-workbench[maps]')"
    if mapview.is_current(s.out, s.sets):
        return "skipped", "maps.html is newer than its maps and predictions"
    path = mapview.write_map_view(s.out, s.sets, log=s.log)
    return ("ran", f"{path.stat().st_size / 2**20:.1f} MB, opens offline") if path else ("skipped", "no maps")


def report_stage(s: Study) -> tuple[str, str]:
    from pipeline.report import write_report

    return "ran", ", ".join(p.name for p in write_report(s.out))


@dataclass(frozen=True)
class Stage:
    """One row of `pipeline run`: its name, its function (the study in; its state and a detail line out), when
    it applies, and whether it is optional (a `PipelineError` in it is said, and the run goes on)."""
    name: str
    run: Callable[[Study], tuple[str, str]]
    applies: Callable[[RunConfig], bool] = lambda cfg: True
    optional: bool = False


STAGES = (  # in data-flow order (docs/design.md); a new stage is one row
    Stage("extract", extract_stage),
    Stage("classify", classify_stage),
    Stage("train", train_stage, lambda cfg: bool(cfg.train)),
    Stage("finetune", finetune_stage, lambda cfg: bool(cfg.finetune)),
    Stage("curve", curve_stage),  # how many labels: on the feature sets classify loaded
    Stage("galleries", galleries_stage, optional=True),  # e.g. the images moved: said, and the run goes on
    Stage("audit", audit_stage, optional=True),
    Stage("project", project_stage),
    Stage("evaluate", evaluate_stage, lambda cfg: bool(cfg.wild)),
    Stage("maps.html", map_view_stage, optional=True),  # after evaluate: the wild photos go on the maps too
    Stage("report", report_stage),
)


def run_record(s: Study, command: str | None) -> dict:
    """run.json as a run starts: what was asked for, and the last ten runs' stage times (a skipping rerun must
    not erase them); each stage's entry is added as it finishes, `ran` and `finished` at the end."""
    cfg = s.cfg
    info = {"command": command, "started": datetime.now(UTC).isoformat(timespec="seconds"), "stores": [str(s.store)],
            "dataset": cfg.dataset, "data_dir": str(cfg.data_dir) if cfg.data_dir else None, "backbone": cfg.backbone,
            "image_size": cfg.size, "limit": cfg.limit, "grid": cfg.grid, "cv": cfg.cv,
            "classifiers": s.classifiers, "methods": list(cfg.methods), "backend": s.backend.name, "out": str(s.out),
            "dask": cfg.dask, "wild": cfg.wild, "match_domain": cfg.match_domain, "train": list(cfg.train),
            "finetune": list(cfg.finetune), "stages": []}
    if cfg.finetune:
        info.update(finetune_image_size=cfg.finetune_image_size, finetune_epochs=cfg.finetune_epochs,
                    finetune_minutes=cfg.finetune_minutes)
    if cfg.dataset == "folder":
        info.update(raw_size=cfg.raw_size, test_fraction=cfg.test_fraction)
    old = read_json(s.out / "run.json")
    if old is not None:
        prev = old.pop("previous_runs", [])
        info["previous_runs"] = (prev if isinstance(prev, list) else [])[-9:] + [
            {k: old[k] for k in ("command", "started", "finished", "stages") if k in old}]
    return info


def run_stage(stage: Stage, s: Study, info: dict) -> None:
    """One stage, timed, its entry added to run.json (written at once: a crash keeps the finished stages'
    times). An optional stage's `PipelineError` is said and recorded as skipped."""
    t, log = time.perf_counter(), s.log
    with headed(f"== {stage.name}", log) as s.log:  # a stage that says nothing (skipped) gets no heading
        try:
            state, detail = soft_fail(stage.name, lambda: stage.run(s), s.log) if stage.optional else stage.run(s)
        finally:
            s.log = log
    info["stages"].append({"stage": stage.name, "state": state, "seconds": round(time.perf_counter() - t, 1),
                           "detail": detail})
    atomic_write(s.out / "run.json", json.dumps(info, indent=1))


def run(cfg: RunConfig, command: str | None = None, log: Callable[[str], None] = stderr) -> dict:
    """Every stage of STAGES that applies to `cfg`, in order, each skipping what is done; returns run.json."""
    cfg.check()
    backend = make_backend(cfg.device)  # first: cuML must hook scikit-learn before it is imported
    check_methods(cfg.methods, backend)  # a missing map library is said now, not after the fits
    store, out = cfg.paths()
    s = Study(cfg, store, out, backend, list(cfg.classifiers or DEFAULT_CLASSIFIERS), log)
    # one writer per report folder and its maps, held through every stage (not taken hours later)
    with folder_lock(out, "pipeline run"), folder_lock(out / "maps", "pipeline run"):
        read_results(out)  # a damaged or foreign results file stops the run before any work
        refuse_foreign_tables(out)
        info = run_record(s, command)
        for stage in STAGES:
            if stage.applies(cfg):
                run_stage(stage, s, info)
        info["ran"] = what_ran(store, out)
        info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        atomic_write(out / "run.json", json.dumps(info, indent=1))
        from pipeline.report import write_report

        write_report(out)  # once more, so the report's provenance includes the report stage's own time
        return info
