"""The report: one self-contained HTML file (figures embedded as data URIs, no scripts, nothing fetched) and
the same in Markdown, from what the other stages left under `out`: results.json, confusion/, maps/,
run.json and the stores' meta.json. Knows nothing of how the numbers were computed.
"""
from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from pipeline.apply.gallery import FORMAT as GALLERY_FORMAT
from pipeline.apply.gallery import GALLERY, WILD_GALLERY
from pipeline.apply.mapview import MAPS_HTML
from pipeline.audit import AUDIT, AUDIT_CSV, SHOWN, read_audit
from pipeline.classical.curve import break_even, capped_lines, curve_figure, curve_tables, statement
from pipeline.classical.specs import CLASSIFIERS
from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.files import atomic_write, check_schema, folder_lock, has_fields, read_json
from pipeline.hardware import cpu_name, versions
from pipeline.maps.methods import DEFAULT_METHODS
from pipeline.models.saved import read_card
from pipeline.references import BENCHMARK, STUDY
from pipeline.render import markdown, sheets
from pipeline.render.figures import accuracy_figure, confusion_grid, feature_title, transfer_figure
from pipeline.results import ORDER, curve_path, read_ledger, record_stem

SECTIONS = [("accuracy", "Accuracy"), ("curve", "How many labels do you need?"), ("bars", "Raw pixels vs embeddings"),
            ("confusion", "Confusion matrices"),
            ("images", "The images behind the numbers"), ("audit", "Trust the test set"),
            ("transfer", "Transfer modes"), ("wild", "In the wild"),
            ("maps", "Maps"), ("provenance", "Provenance")]
DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}
VERSIONS = ("numpy", "scikit-learn", "torch", "torchvision", "openvino", "nncf", "openTSNE", "umap-learn", "cleanlab",
            "matplotlib")


def _read_json(path: Path, default=None):
    """A file the report shows: missing is `default`; unreadable or damaged is one line."""
    obj = read_json(path, kind=object, strict=True)
    return default if obj is None else obj


_STAGES = {"type": "array", "items": {"type": "object", "required": ["stage", "state", "seconds"], "properties": {
    "stage": {"type": "string"}, "state": {"type": "string"}, "seconds": {"type": "number"},
    "detail": {"type": "string"}}}}
_TEXT = {"type": ["string", "null"]}
# run.json (written by `pipeline run`), declaratively: the fields the report reads, with their types
RUN_SCHEMA = {"type": "object", "properties": {
    "command": _TEXT, "started": _TEXT, "finished": _TEXT, "dataset": _TEXT, "data_dir": _TEXT,
    "stores": {"type": "array", "items": {"type": "string"}}, "stages": _STAGES, "ran": {"type": "object"},
    "previous_runs": {"type": "array", "items": {"type": "object", "properties": {
        "command": _TEXT, "started": _TEXT, "finished": _TEXT, "stages": _STAGES}}}}}

MAP_KEYS = {"feature_set": str, "method": str, "label": str, "knn_accuracy": float, "trustworthiness": float,
            "rows": int, "knn": int, "trust_rows": int, "seconds": (int, float), "implementation": str}


def _map_meta(path: Path) -> dict:
    m = _read_json(path)
    if not has_fields(m, MAP_KEYS):
        raise PipelineError(f"{path} is not a map's record (expected {', '.join(MAP_KEYS)}); move it out of "
                            f"{path.parent}, or rerun `pipeline project` to write it again")
    return m


def gather(out: Path) -> dict:
    """Everything the report shows, as plain data."""
    out = Path(out)
    records, curves = read_ledger(out)
    order = list(DEFAULT_METHODS)
    maps = sorted((_map_meta(p) for p in (out / "maps").glob("*.json")),  # by method, raw pixels first
                  key=lambda m: (order.index(m["method"]) if m["method"] in order else 9, m["feature_set"] != "raw",
                                 m["feature_set"]))
    if not records and not maps and not curves:
        raise PipelineError(f"nothing to report in {out}: run `pipeline classify` or `pipeline project` "
                            f"(or `pipeline run`) with --out {out} first")
    run = _read_json(out / "run.json", {})
    check_schema(run, RUN_SCHEMA, out / "run.json", "move it away (`pipeline run` writes it)")
    stores = {}
    for path in run.get("stores", []):
        meta = _read_json(Path(path) / "meta.json")
        if meta:
            stores[path] = meta
    installed = {k: v for k, v in versions(*VERSIONS).items() if k != "python"}  # python: in the hardware
    cards = {}
    for path in sorted((out / "models").glob("*.json")):
        card = read_card(path)
        cards[(card["feature_set"], card["classifier"])] = card
    galleries = {name: _gallery(out / name) for name in (GALLERY, WILD_GALLERY)}
    return {"out": out, "records": records, "curves": curves, "maps": maps, "run": run, "stores": stores,
            "versions": installed,
            "cards": cards, "galleries": galleries.get(GALLERY), "wild_gallery": galleries.get(WILD_GALLERY),
            "audit": read_audit(out / AUDIT),
            "hardware": _hardware(), "created": datetime.now(UTC).isoformat(timespec="seconds")}


def _gallery(path: Path) -> dict | None:
    g = _read_json(path)
    if g is None:
        return None
    if not (isinstance(g, dict) and g.get("format") == GALLERY_FORMAT and isinstance(g.get("thumbs"), dict)):
        raise PipelineError(f"{path} is not pipeline's galleries file; move it away (`pipeline run` or "
                            f"`pipeline classify` writes it again)")
    return g


def _hardware() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


# --- tables as rows, shared by HTML and Markdown -------------------------------------------------------

def dataset_label(d: dict) -> str:
    """'Fashion-MNIST', or 'image folder <name>' for a folder study."""
    names = {r.get("dataset") for r in d["records"]} | {m.get("dataset", {}).get("name") for m in d["stores"].values()}
    names.discard(None)
    name = d["run"].get("dataset") or (names.pop() if len(names) == 1 else None)
    if name == "folder":
        src = d["run"].get("data_dir") or next((m.get("dataset", {}).get("source") for m in d["stores"].values()), "")
        return f"image folder {Path(os.path.abspath(src)).name}" if src else "an image folder"
    return DATASET_LABELS.get(name, name or "")


def raw_note(d: dict) -> str:
    """What 'raw pixels' means in this study (from a raw model's card)."""
    card = next((c for (fs, _), c in d["cards"].items() if fs == "raw"), None)
    raw = card["features"] if card else None
    if not raw:
        return ""
    if raw.get("resize"):
        return (f"Raw pixels: every image resized to {raw['size']}x{raw['size']} "
                f"{'grayscale' if raw['channels'] == 1 else 'RGB'} ({raw['resize']}), flattened, scaled to 0..1. ")
    shape = raw.get("image_shape") or [raw.get("channels"), raw.get("size"), raw.get("size")]
    return f"Raw pixels: the images as they are ({shape[1]}x{shape[2]}, {shape[0]} channel(s)), flattened, 0..1. "


def wild_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Test vs in-the-wild accuracy per model, and how far each falls (with domain matching, if run)."""
    matched = any("wild_matched_accuracy" in r for r in records)
    head = ["features", "classifier", "test", "in the wild", "wild − test", "wild macro-F1"]
    if matched:
        head += ["domain-matched", "matched − test"]
    rows = []
    for r in records:
        if "wild_accuracy" not in r:
            continue
        row = [feature_title(r["feature_set"]), r.get("label", r["classifier"]), f"{r['test_accuracy']:.4f}",
               f"{r['wild_accuracy']:.4f}", f"{r['wild_accuracy'] - r['test_accuracy']:+.4f}",
               f"{r['wild_macro_f1']:.4f}"]
        if matched:
            m = r.get("wild_matched_accuracy")
            row += [f"{m:.4f}", f"{m - r['test_accuracy']:+.4f}"] if m is not None else ["–", "–"]
        rows.append(row)
    return head, rows


def _wild_caption(records: list[dict]) -> str:
    src = next((r["wild_source"] for r in records if isinstance(r.get("wild_source"), dict)), None)
    if not src:
        return "No in-the-wild test yet: `pipeline evaluate --folder DIR` (or `pipeline run --wild DIR`) adds it."
    n_cls = len(src.get("classes", []))
    n_all = next((len(r["classes"]) for r in records if "wild_accuracy" in r), n_cls)
    text = (f"Every saved model on {src.get('images', 0):,} photos of {n_cls} of its {n_all} classes from "
            f"{Path(os.path.abspath(str(src.get('folder', '')))).name}/, made into features as the model's training "
            f"images were (same backbone, weights, preprocessing and image size). Chance is about "
            f"{1 / max(n_all, 1):.2f}.")
    if src.get("match_domain"):
        text += f" Domain-matched: each photo first mapped toward the training images' look ({src['match_domain']})."
    return text

def _vs_study(records: list[dict]) -> bool:
    """The study's and the benchmark's numbers are for Fashion-MNIST only."""
    return all(r.get("dataset", "fashion-mnist") == "fashion-mnist" for r in records)


def frozen(records: list[dict]) -> list[dict]:
    """Records of models on stored features (classical and trained heads), not fine-tuned networks."""
    return [r for r in records if r["classifier"] != "finetune"]


def _device(r: dict) -> str:
    return r.get("device_name") or ("CPU" if r.get("device", "cpu") == "cpu" else r["device"])


def transfer_points(records: list[dict]) -> list[dict]:
    """One point per transfer mode: for each feature set, the best classical model (by its CV score, never by
    the test set) and each trained head; then every fine-tuned network. Training time: search + refit for
    classical models, the whole training (with resumed parts) for heads and networks."""
    points = []
    for s in dict.fromkeys(r["feature_set"] for r in frozen(records)):
        rs = [r for r in records if r["feature_set"] == s]
        classical = [r for r in rs if r["classifier"] in CLASSIFIERS]
        what = "raw pixels" if s == "raw" else f"frozen {s}"
        if classical:
            b = max(classical, key=lambda r: r["cv_mean"])  # chosen by CV: the test set only reports
            points.append({"mode": f"{what} + best classical by CV ({b['label']})", "record": b,
                           "seconds": b["search_seconds"] + b["fit_seconds"]})
        for r in rs:
            if r["classifier"] in ("linear", "mlp"):
                points.append({"mode": f"{what} + {r['label'].lower()}", "record": r, "seconds": r["fit_seconds"]})
    for r in records:
        if r["classifier"] == "finetune":
            points.append({"mode": r["feature_set"], "record": r, "seconds": r["fit_seconds"]})
    for p in points:
        p.update(test_accuracy=p["record"]["test_accuracy"], device=_device(p["record"]))
    return points


def transfer_rows(points: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["mode", "test accuracy", "macro-F1", "training time", "device", "precision", "epochs (kept/run)",
            "trainable parameters"]
    rows = []
    for p in points:
        r = p["record"]
        t = p["seconds"]
        epochs = f"{r['best_epoch']}/{r['epochs_run']}" + (" (budget)" if r.get("stopped_by") == "budget" else "") \
            if "best_epoch" in r else "–"
        rows.append([p["mode"], f"{r['test_accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                     f"{t / 60:.1f} min" if t >= 120 else f"{t:.0f} s", p["device"], r.get("precision", "fp64/fp32"),
                     epochs, f"{r['trainable_parameters']:,}" if "trainable_parameters" in r else "–"])
    return head, rows


def _transfer_caption(points: list[dict]) -> str:
    if not any("best_epoch" in p["record"] for p in points):
        return ("Only classical models on stored features so far: `pipeline train --head mlp` and `pipeline "
                "finetune` (or `pipeline run --train mlp --finetune 2`) add trained heads and fine-tuned networks.")
    return ("Frozen features + a classical model, or a trained head, or a fine-tuned network: test accuracy and "
            "the wall-clock time of training (classical: grid search + refit; extraction of the stored features "
            "is not included, see Provenance) on the device named. Heads and networks stop early on a stratified "
            "validation split of the training images and keep their best epoch; '(budget)' marks a run stopped "
            "by --max-minutes. Learning curves below.")


def accuracy_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    records = frozen(records)
    sets = list(dict.fromkeys(r["feature_set"] for r in records))
    fashion = _vs_study(records)
    by = {(r["feature_set"], r["classifier"]): r for r in records}
    head = ["classifier"] + [f"{feature_title(s)} (ours)" for s in sets]
    if "raw" in sets and len(sets) > 1:
        head.append("best embeddings − raw")
    if fashion:
        head += ["raw (study)", "ResNet-18 (study)", "raw (Fashion-MNIST benchmark)"]
    rows = []
    labels = {r["classifier"]: r["label"] for r in records}
    for c in [c for c in ORDER if any((s, c) in by for s in sets)]:
        accs = [by[(s, c)]["test_accuracy"] if (s, c) in by else None for s in sets]
        row = [labels[c]] + [f"{a:.4f}" if a is not None else "–" for a in accs]
        if "raw" in sets and len(sets) > 1:
            raw = accs[sets.index("raw")]
            emb = [a for s, a in zip(sets, accs) if s != "raw" and a is not None]
            row.append(f"{max(emb) - raw:+.4f}" if raw is not None and emb else "–")
        if fashion:
            study = STUDY.get(c)
            row += [f"{study[1]:.4f}", f"{study[0]:.4f}"] if study else ["–", "–"]
            row.append(f"{BENCHMARK[c]:.3f}" if c in BENCHMARK else "–")
        rows.append(row)
    return head, rows


def detail_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    wild = any("wild_accuracy" in r for r in records)
    head = ["features", "classifier", "best params", "CV", "test", "macro-F1"] + (["in the wild"] if wild else []) \
        + ["search s", "refit s", "backend"]
    rows = [[r["feature_set"], r["classifier"], json.dumps(r["best_params"], sort_keys=True) if r["best_params"]
             else "– (one candidate)",
             f"{r['cv_mean']:.4f} ± {r['cv_std']:.4f}", f"{r['test_accuracy']:.4f}", f"{r['macro_f1']:.4f}"]
            + ([f"{r['wild_accuracy']:.4f}" if "wild_accuracy" in r else "–"] if wild else [])
            + [f"{r['search_seconds']:.0f}", f"{r['fit_seconds']:.0f}", r["backend"]] for r in records]
    return head, rows


def map_rows(maps: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "features", "points", f"{maps[0]['knn'] if maps else 5}-NN accuracy in 2-D",
            "trustworthiness", "seconds", "implementation"]
    rows = [[m["label"], feature_title(m["feature_set"]), f"{m['rows']:,}", f"{m['knn_accuracy']:.4f}",
             f"{m['trustworthiness']:.4f} ({m['trust_rows']:,} rows)", f"{m['seconds']:.1f}", m["implementation"]]
            for m in maps]
    return head, rows


def stage_rows(run: dict) -> tuple[list[str], list[list[str]]]:
    """Time per stage of this run and of the runs before it (a rerun skips what they already paid for)."""
    head = ["run started", "stage", "state", "seconds", "detail"]
    rows = [[r.get("started", "?"), s["stage"], s["state"], f"{s['seconds']:.1f}", s.get("detail", "")]
            for r in [*run.get("previous_runs", []), run] for s in r.get("stages", [])]
    return head, rows


def dataset_rows(stores: dict) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "classes", "rows (train / test)", "content sha256"]
    rows = []
    for m in stores.values():
        d = m.get("dataset", {})
        r = d.get("rows", {})
        row = [d.get("name", ""), str(len(d.get("classes", []))), f"{r.get('train', 0):,} / {r.get('test', 0):,}",
               str(d.get("content_sha256", ""))[:16]]
        if row not in rows:
            rows.append(row)
    return head, rows


def store_rows(stores: dict) -> tuple[list[str], list[list[str]]]:
    head = ["store", "backbone", "weights", "image size", "precision / engine / device", "img/s", "created"]
    rows = []
    for path, m in stores.items():
        bb, eng, dev = m.get("backbone", {}), m.get("engine", {}), m.get("device", {})
        w = bb.get("weights", {})
        w = f"{w.get('id', '')} (sha256 {str(w.get('sha256', ''))[:12]})" if isinstance(w, dict) else str(w)
        rows.append([str(path), bb.get("name", ""), w, str(m.get("image_size", "")),
                     f"{m.get('precision', '')} / {eng.get('engine', eng) if isinstance(eng, dict) else eng} / "
                     f"{dev.get('name', dev) if isinstance(dev, dict) else dev}",
                     f"{m.get('throughput', {}).get('img_per_s', 0):.0f}", m.get("created", "")])
    return head, rows


# --- galleries -----------------------------------------------------------------------------------------

def _caption_of(item: dict, classes: list[str]) -> str:
    t, p = classes[item["true"]], classes[item["pred"]]
    return f"{t} ✓ {item['score']:.2f}" if t == p else f"{t} → {p} {item['score']:.2f}"


def gallery_blocks(g: dict | None) -> list[tuple[str, str, list]]:
    """(heading, text, thumbnails as HTML: one row, or a list of rows) per gallery of galleries.json, in the
    report's order."""
    if not g:
        return []
    classes, th = g["classes"], g["thumbs"]
    fig = lambda it, cap=None: sheets.thumb(th[it["thumb"]], cap or _caption_of(it, classes),  # noqa: E731
                                            wrong=it["true"] != it["pred"])
    blocks = []
    for s in g["galleries"]:
        what = f"{s['label']} on {feature_title(s['feature_set'])}"
        score = {"probability": "probability", "margin": "decision margin over the runner-up"}.get(
            s["score_kind"], "decision score")
        blocks.append((f"{what}: most confidently wrong",
                       f"The {len(s['wrong'])} test images with the highest {score} among its {s['n_wrong']:,} "
                       f"errors in {s['n_test']:,} (caption: true → predicted, {score}).",
                       [fig(it) for it in s["wrong"]]))
        for p in s["pairs"]:
            blocks.append((f"{what}: {classes[p['true']]} taken for {classes[p['pred']]} ({p['count']:,} times)",
                           "", [fig(it) for it in p["items"]]))
    v = g.get("versus")
    if v:
        e = feature_title(v["embeddings"])
        blocks.append((f"Right with {e}, wrong with raw pixels ({v['embeddings_only']['count']:,} images)",
                       f"{v['embeddings_model']} on {e} vs {v['raw']} on raw pixels: {v['both_right']:,} test images "
                       f"both get right, {v['both_wrong']:,} both get wrong. Caption: true → what raw pixels said.",
                       [sheets.thumb(th[it["thumb"]], f"{classes[it['true']]} → {classes[it['raw']]}", wrong=True)
                        for it in v["embeddings_only"]["items"]]))
        blocks.append((f"Right with raw pixels, wrong with {e} ({v['raw_only']['count']:,} images)",
                       "Caption: true → what the embeddings said.",
                       [sheets.thumb(th[it["thumb"]], f"{classes[it['true']]} → {classes[it['emb']]}", wrong=True)
                        for it in v["raw_only"]["items"]]))
    ret = g.get("retrieval", [])
    for q in range(len(ret[0]["examples"]) if ret else 0):  # each example query: a row per feature set
        ex = ret[0]["examples"][q]
        rows = [[sheets.thumb(th[ex["query"]], f"{feature_title(r['feature_set'])}: query", extra="query")]
                + [sheets.thumb(th[n["thumb"]], f"{classes[n['label']]} ({n['distance']:.2f})",
                                wrong=n["label"] != ex["label"]) for n in r["examples"][q]["neighbors"]]
                for r in ret]
        blocks.append((f"Nearest training images of a test {classes[ex['label']]}",
                       "One row per feature set; caption: label (cosine distance), red where it is another class.",
                       rows))
    return blocks


def retrieval_rows(g: dict | None) -> tuple[list[str], list[list[str]]]:
    rows = [[feature_title(r["feature_set"]), f"{r['precision']:.4f}", str(r["k"]), r["metric"]]
            for r in (g or {}).get("retrieval", [])]
    return ["features", f"precision@{rows[0][2] if rows else 10}", "k", "distance"], rows


def gallery_rows(g: dict | None) -> tuple[list[str], list[list[str]]]:
    """The galleries as counts (Markdown shows these; the images are in report.html)."""
    if not g:
        return [], []
    classes = g["classes"]
    rows = []
    for s in g["galleries"]:
        pairs = "; ".join(f"{classes[p['true']]} → {classes[p['pred']]} ({p['count']})" for p in s["pairs"])
        rows.append([feature_title(s["feature_set"]), s["label"], f"{s['n_wrong']:,} of {s['n_test']:,}", pairs])
    return ["features", "best model (by CV)", "test errors", "most confused (true → predicted)"], rows


def _images_caption(g: dict | None) -> str:
    if not g:
        return ("No galleries yet: `pipeline run` (or `pipeline classify` with --out) draws them from the saved "
                "models.")
    v = g.get("versus")
    text = ("For each feature set's best model, chosen by its CV (or validation) score, not the test score: the "
            "test images it gets most confidently wrong, and a grid per most-confused class pair. ")
    if v:
        text += (f"Raw pixels vs {feature_title(v['embeddings'])} image by image: the embeddings get "
                 f"{v['embeddings_only']['count']:,} test images right that raw pixels get wrong, raw pixels "
                 f"{v['raw_only']['count']:,} the other way round. ")
    if g.get("retrieval"):
        r = g["retrieval"][0]
        text += (f"Retrieval: precision@{r['k']} is the share of each test image's {r['k']} nearest training images "
                 f"({r['metric']} distance) that have its class, averaged over the test images. ")
    return text + "Images in report.html."


def wild_blocks(g: dict | None) -> list[tuple[str, str, list[str]]]:
    if not g:
        return []
    classes, th = g["classes"], g["thumbs"]
    return [(f"{s['label']} on {feature_title(s['feature_set'])} in the wild: {s['accuracy']:.4f} of {s['n']:,}",
             "Wrong first (red), each: true → predicted, score.",
             [sheets.thumb(th[it["thumb"]], _caption_of(it, classes), wrong=it["true"] != it["pred"])
              for it in s["items"]]) for s in g["galleries"]]


# --- the audit (audit.json) ---------------------------------------------------------------------------

def audit_rows(a: dict) -> tuple[list[str], list[list[str]]]:
    c, li, t = a["duplicates"]["counts"], a["label_issues"], a["thresholds"]
    store = feature_title(a["store"]["name"])
    rows = [["exact duplicate groups", f"{c['exact_groups']:,}", "the same decoded pixels"],
            ["near duplicate groups", f"{c['near_groups']:,}",
             f"among the {a['params']['neighbors']} nearest in {store} (cosine distance ≤ {t['embedding_cosine']:.4f}, "
             f"calibrated), confirmed on {a['params']['signature']} pixels: correlation ≥ {t['pixel_corr']}, mean "
             f"difference ≤ {t['pixel_mad']} grey levels"],
            ["groups within train / within test / across", f"{c['groups_train']:,} / {c['groups_test']:,} / "
             f"{c['groups_across']:,}", ""],
            ["train ↔ test", f"{c['pairs_train_test']:,} pairs; {c['test_with_train_twin']:,} test images have a "
             f"training twin", ""],
            ["groups with conflicting labels", f"{c['conflicting_groups']:,}", ""],
            ["label issues", f"train {len(li['train']):,} ({li['share']['train']:.2%}), test {len(li['test']):,} "
             f"({li['share']['test']:.2%})", f"{t['label_issues']}; out-of-fold probabilities of {li['model']} "
             f"({li['folds']} folds on train; fitted on train for test)"],
            ["outliers", f"{a['outliers']['count']:,}", f"mean cosine distance to the {a['params']['neighbors']} "
             f"nearest training images > {t['outlier_distance']:.4f} (training median {t['outlier_median']:.4f} + "
             f"{a['params']['outlier_z']:g} robust SD)"]]
    return ["check", "found", "how"], rows


def audit_accuracy_rows(a: dict | None) -> tuple[list[str], list[list[str]]]:
    """Each record's test accuracy on all test images, without the leaked ones, without the suspect labels."""
    acc = (a or {}).get("accuracy", [])
    if not acc:
        return [], []
    n_twin, n_label = acc[0]["removed_twins"], acc[0]["removed_label_issues"]
    rows = [[feature_title(r["feature_set"]), r.get("label") or r["classifier"], _opt(r["all"]),
             _opt(r["without_train_twins"]), _delta(r["without_train_twins"], r["all"]),
             _opt(r["without_label_issues"]), _delta(r["without_label_issues"], r["all"])] for r in acc]
    return ["features", "classifier", "test accuracy", f"without the {n_twin:,} with a training twin", "change",
            f"without the {n_label:,} suspect labels", "change"], rows


def _opt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _delta(x, ref) -> str:
    return "–" if x is None or ref is None else f"{x - ref:+.4f}"


def audit_class_rows(a: dict) -> tuple[list[str], list[list[str]]]:
    pc, few = a["label_issues"]["per_class"], a["label_issues"].get("too_few_to_check", {})
    return ["class", "label issues in train", "in test"], [
        [name] + [_share(pc[s][k]) + (" (under 5 images: some may be missed)" if k in few.get(s, []) else "")
                  for s in ("train", "test")] for k, name in enumerate(a["classes"])]


def _share(x) -> str:
    return "–" if x is None else f"{x:.2%}"


def _audit_caption(a: dict | None) -> str:
    if not a:
        return ("No audit yet: `pipeline audit` (or `pipeline run`) checks the split for duplicates, train ↔ test "
                "leaks, label issues and outliers.")
    c = a["duplicates"]["counts"]
    t = a["thresholds"]
    flagged = len(a["duplicates"]["groups"]) + len(a["label_issues"]["train"]) + len(a["label_issues"]["test"]) \
        + a["outliers"]["count"]
    r = a["store"]["rows"]
    text = f"The {r['train']:,} training and {r['test']:,} test images checked with " \
        f"{feature_title(a['store']['name'])}. "
    if not flagged:
        return text + (f"Nothing flagged at these thresholds: no exact or near duplicates (cosine ≤ "
                       f"{t['embedding_cosine']:.4f}, then pixels), no label issues, no outliers.")
    cal = a["calibration"]
    confirmed = ", ".join(f"{v['pixel_confirmed']:.0%} of the {name}" for name, v in cal["variants"].items()
                          if "pixel_confirmed" in v)
    return text + (f"{c['test_with_train_twin']:,} test images have a twin in the training split; the accuracy "
                   f"without them (and without the suspect labels) is in the Accuracy section. How near a "
                   f"duplicate must be was measured: {cal['images']} training images were copied (re-encoded, "
                   f"resized, cropped), and the embedding-distance bound is the largest distance from an image to "
                   f"its copy. The pixel check then confirmed {confirmed or format(cal['pixel_confirmed'], '.0%')} "
                   f"copies; a duplicate made the way of an unconfirmed copy may be missed. Every flagged file is "
                   f"in {AUDIT_CSV}; nothing was changed. Images in report.html.")


def audit_blocks(a: dict | None) -> list[tuple[str, str, list]]:
    if not a:
        return []
    classes, th = a["classes"], a["thumbs"]
    blocks = []
    groups = a["duplicates"]["groups"]
    if groups:
        rows = [[sheets.thumb(th[f"{s}:{i}"], f"{s} #{i}: {classes[y]}", wrong=g["conflicting_labels"])
                 for s, i, y in g["members"][:8] if f"{s}:{i}" in th] for g in groups[:SHOWN]]
        blocks.append((f"Duplicate groups ({len(groups):,}; the first {min(len(groups), SHOWN)})",
                       "One row per group: split #index: label; red where the group's labels conflict.", rows))
    for split in ("train", "test"):
        items = a["label_issues"][split]
        if items:
            blocks.append((f"Suspected label errors in {split} ({len(items):,}; the most suspect "
                           f"{min(len(items), SHOWN)})",
                           "Caption: given label → suggested label, the probability of the given label.",
                           [sheets.thumb(th[f"{split}:{it['index']}"], f"{classes[it['given']]} → "
                                         f"{classes[it['suggested']]} {it['self_confidence']:.2f}", wrong=True)
                            for it in items[:SHOWN] if f"{split}:{it['index']}" in th]))
    items = a["outliers"]["items"]
    if items:
        blocks.append((f"Outliers ({len(items):,}; the farthest {min(len(items), SHOWN)})",
                       "Caption: split, label, mean cosine distance to the nearest training images.",
                       [sheets.thumb(th[f"{it['split']}:{it['index']}"], f"{it['split']} {classes[it['label']]} "
                                     f"{it['score']:.2f}") for it in items[:SHOWN]
                        if f"{it['split']}:{it['index']}" in th]))
    return blocks


# --- writers -------------------------------------------------------------------------------------------

def _figures(d: dict, points: list[dict]) -> dict:
    """Paths (relative to out) of the figures the report shows, drawing the accuracy bars here."""
    out, all_records = d["out"], d["records"]
    records = frozen(all_records)
    figs = {"bars": None, "confusion": [], "maps": [], "wild": [], "transfer": [], "curve": []}
    if d["curves"]:
        curve_figure(d["curves"], out)
        figs["curve"].append(("test accuracy against labelled images per class", "figures/curve.png"))
    if any("best_epoch" in p["record"] for p in points):
        transfer_figure(points, out / "figures" / "transfer.png")
        figs["transfer"].append(("test accuracy vs training time per transfer mode", "figures/transfer.png"))
        for r in all_records:
            rel = curve_path(r)
            if "history" in r and (out / rel).exists():
                figs["transfer"].append((f"learning curve: {r['label']} on {r['feature_set']}", rel))
    if records:
        accuracy_figure(records, out / "figures" / "accuracy.png", STUDY if _vs_study(records) else None)
        figs["bars"] = "figures/accuracy.png"
        confusion_grid(records, out / "figures" / "confusion.png")  # linked: at a page's width it is small
        for s in dict.fromkeys(r["feature_set"] for r in records):  # shown: each feature set's best by CV
            b = max((r for r in records if r["feature_set"] == s), key=lambda r: r["cv_mean"])
            rel = f"confusion/{record_stem(s, b['classifier'])}.png"
            if (out / rel).exists():
                figs["confusion"].append((f"{b['label']} on {feature_title(s)}, its best model by CV: test "
                                          f"confusion matrix", rel))
        for prefix, what in (("wild", "in the wild"), ("wild_matched", "in the wild, domain-matched")):
            wild = [r for r in records if f"{prefix}_confusion_matrix" in r]
            if wild:
                rel = f"figures/confusion_{prefix}.png"
                confusion_grid(wild, out / rel, f"{prefix}_confusion_matrix", f"{prefix}_accuracy")
                figs["wild"].append((f"confusion matrices {what}", rel))
    for method, label in dict.fromkeys((m["method"], m["label"]) for m in d["maps"]):
        if (out / "maps" / f"{method}.png").exists():
            figs["maps"].append((label, f"maps/{method}.png"))
    return figs


def _curve_caption(curves: list[dict]) -> str:
    """The curve's protocol, its break-even statements and the classes a k was capped for."""
    if not curves:
        return ("No label-efficiency curve yet: `pipeline curve` (or `pipeline run`) fits each feature set on a "
                "few labelled images per class.")
    r = curves[0]
    draws = sorted({len(c["draws"]) for c in curves if c["k"] != "all"})
    clfs = {c["classifier"] for c in curves}
    text = (f"Test accuracy on all {r['n_test']:,} test images after training on k labelled images per class: "
            f"{' to '.join(map(str, draws[::max(1, len(draws) - 1)])) or 'no'} seeded stratified draws per k "
            f"(mean ± 1 sd), and every label at the end. "
            + ("Logistic regression's C is chosen by 3-fold CV on each k's first draw (where every class has 3 "
               "images; else 0.1). " if "logreg" in clfs else "")
            + ("k-NN is the classify stage's pipeline with its PCA and neighbours capped by the draw. "
               if "knn" in clfs else ""))
    said = [statement(b) for b in break_even(curves)] + capped_lines(curves)
    sets = dict.fromkeys(f"{c['feature_set']}: {c['features']}" for c in curves if c.get("features"))
    return text + " ".join(said) + (f" Features: {'; '.join(sets)}." if sets else "")


def _html_table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _img(out: Path, rel: str, alt: str) -> str:
    data = base64.b64encode((out / rel).read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>' \
           f'{html.escape(alt)}</figcaption></figure>'


def _caption(records: list[dict]) -> str:
    if not records:
        return "No classification results yet."
    r = records[0]
    return (f"Test accuracy on {r['n_test']:,} test images. Grid {r.get('grid', '?')!r}: each classifier's "
            f"candidates scored by {r['cv_folds']}-fold CV on {r['tune_rows']:,} of {r['n_train']:,} training "
            f"images (one with a single candidate is only scored), the best refitted on all of them; every "
            f"refitted model is saved in models/." + (
                " Study: the original paper's ResNet-18 vs raw pixels. Benchmark: Zalando's scikit-learn baselines "
                "on raw pixels (best per classifier, mean of 5 runs; arXiv:1708.07747)." if _vs_study(records) else ""))


def write_report(out: Path) -> tuple[Path, Path]:
    """Write out/report.html (self-contained) and out/report.md; returns both paths."""
    if not Path(out).is_dir():
        raise PipelineError(f"nothing to report in {out}: run `pipeline classify` or `pipeline project` "
                            f"(or `pipeline run`) with --out {out} first")
    with folder_lock(out, "pipeline report"):
        return _write_report(out)


def _sections(d: dict, points) -> dict:
    """Each section's caption and tables (the galleries' and the audit's are added by `_file_blocks`)."""
    return {
        "accuracy": (raw_note(d) + _caption(d["records"]), [accuracy_rows(d["records"]), detail_rows(d["records"])]
                     if d["records"] else []),
        "curve": (_curve_caption(d["curves"]), curve_tables(d["curves"])),
        "bars": ("Grouped bars per classifier" + ("; hatched bars are the original study's." if
                                                  _vs_study(d["records"]) else "."), []),
        "confusion": ("Rows: true class, normalised, with counts: each feature set's best model by CV. Every "
                      "model's matrix alone is in confusion/, all of them side by side in figures/confusion.png.",
                      []),
        "images": ("", []),  # from galleries.json: below, where a damaged file is said in one line
        "audit": ("", []),  # from audit.json, likewise
        "transfer": (_transfer_caption(points), [transfer_rows(points)] if points else []),
        "wild": (_wild_caption(d["records"]), [wild_rows(d["records"])] if any("wild_accuracy" in r for r in
                                                                                 d["records"]) else []),
        "maps": ("Train and test points together, coloured by class. k-NN accuracy in 2-D (5-fold CV) says how "
                 "well the map separates the classes; trustworthiness (on a seeded subsample) how faithfully it "
                 "keeps neighbours of the standardised features.", [map_rows(d["maps"])] if d["maps"] else []),
        "provenance": ((f"Command: {d['run']['command']}. " if d["run"].get("command") else "")
                       + f"Written {d['created']} on {d['hardware']['cpu']} ({d['hardware']['cores']} cores), "
                       f"Python {d['hardware']['python']}; " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()),
                       [t for t in (stage_rows(d["run"]), dataset_rows(d["stores"]), store_rows(d["stores"]))
                        if t[1]]),
    }


def _file_blocks(d: dict, sections: dict) -> dict:
    """The image blocks drawn from galleries.json, galleries_wild.json and audit.json, and their sections'
    captions and tables; an edited or damaged file is one line."""
    blocks = {}
    for key, name, g, draw in (("images", GALLERY, d["galleries"], gallery_blocks),
                               ("wild", WILD_GALLERY, d["wild_gallery"], wild_blocks),
                               ("audit", AUDIT, d["audit"], audit_blocks)):
        try:
            blocks[key] = draw(g)
            if key == "images":
                sections[key] = (_images_caption(g), [t for t in (gallery_rows(g), retrieval_rows(g)) if t[1]])
            if key == "audit":
                without = audit_accuracy_rows(g)  # shown once: in Accuracy, beside the numbers it qualifies
                sections[key] = (_audit_caption(g), [audit_rows(g), audit_class_rows(g)] if g else [])
                if without[1]:
                    sections["accuracy"][1].insert(1, without)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise PipelineError(f"{d['out'] / name} is damaged ({type(e).__name__}: {str(e)[:80]}); move it away, "
                                f"`pipeline run` (or classify / evaluate) writes it again") from None
    return blocks


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;"
          "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
          "img{max-width:100%}figure{display:inline-block;margin:0.5em}figcaption{font-size:0.8em;color:#555}"
          + sheets.CSS)


def _render(out: Path, title: str, sections: dict, images: dict, blocks: dict,
            links: dict | None = None) -> tuple[str, str]:
    """The page (HTML) and the Markdown, section by section in SECTIONS' order; `links`: {section: [(text,
    relative path)]}, shown under the section's caption."""
    md = [f"# {markdown.escape(title)}", ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            "<nav>" + " · ".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in SECTIONS) + "</nav>"]
    for key, heading in SECTIONS:
        text, tables = sections[key]
        md += [f"## {heading}", "", markdown.escape(text), ""]
        body += [f'<section id="{key}"><h2>{html.escape(heading)}</h2><p>{_html_text(text)}</p>']
        for text_, rel in (links or {}).get(key, []):
            md += [f"[{markdown.escape(text_)}]({quote(rel)})", ""]
            body.append(f'<p class="link"><a href="{html.escape(quote(rel))}">{html.escape(text_)}</a></p>')
        for t in tables:
            md += [markdown.table(*t), ""]
            body.append(_html_table(*t))
        for alt, rel in images.get(key, []):
            md += [f"![{markdown.escape(alt)}]({quote(rel)})", ""]
            body.append(_img(out, rel, alt))
        for heading_, text_, thumbs in blocks.get(key, []):  # thumbs: one grid, or a list of grids (rows)
            rows = thumbs if thumbs and isinstance(thumbs[0], list) else [thumbs]
            body.append(f"<h3>{html.escape(heading_)}</h3>" + (f"<p>{_html_text(text_)}</p>" if text_ else "")
                        + "".join(sheets.grid(r) for r in rows))
        if not tables and not images.get(key) and not blocks.get(key):
            md += ["(nothing yet)", ""]
            body.append("<p><em>nothing yet</em></p>")
        body.append("</section>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return page, "\n".join(md)


def _html_text(text: str) -> str:
    """A caption as HTML: escaped, its `commands` set as code (not shown with their backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _write_report(out: Path) -> tuple[Path, Path]:
    d = gather(out)
    out = d["out"]
    points = transfer_points(d["records"])
    figs = _figures(d, points)
    sections = _sections(d, points)
    images = {"bars": [("test accuracy per classifier", figs["bars"])] if figs["bars"] else [],
              "confusion": figs["confusion"], "wild": figs["wild"], "transfer": figs["transfer"],
              "curve": figs["curve"],
              "maps": [(f"{m} maps", p) for m, p in figs["maps"]]}
    blocks = _file_blocks(d, sections)
    label = dataset_label(d)
    title = f"pipeline report: do pretrained embeddings beat raw pixels{' on ' + label if label else ''}?"
    links = {"confusion": [("every classifier's confusion matrix, side by side (figures/confusion.png)",
                            "figures/confusion.png")]} if figs["confusion"] else {}
    links.update({"maps": [("Interactive maps (maps.html): hover a point to see its image and how each feature "
                       "set's best model classified it", MAPS_HTML)]} if (out / MAPS_HTML).is_file() else {})
    paths = out / "report.html", out / "report.md"
    for path, text in zip(paths, _render(out, title, sections, images, blocks, links)):
        atomic_write(path, text)
        fault_point("report:write")
    return paths
