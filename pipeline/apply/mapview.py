"""`maps.html`: the 2-D maps of raw pixels and embeddings side by side, interactive and self-contained (Bokeh,
its JavaScript inlined: it opens offline). Every image is a point coloured by class; a seeded sample of them
(`HOVER_POINTS`) carries a thumbnail, shown on hover with the label and each saved model's prediction; a
selection in one map is the same images in every map; a switch shows only the test images a feature set's
best model gets wrong. Written beside report.html by `pipeline run` and `pipeline project`."""
from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.apply.gallery import WILD_GALLERY, best_records
from pipeline.apply.neighbors import nearest
from pipeline.console import content_key, stderr
from pipeline.data.images import show_path
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, read_json
from pipeline.maps.methods import DEFAULT_METHODS, METHODS
from pipeline.maps.project import load_map
from pipeline.render.figures import class_colours, feature_title, short_name
from pipeline.render.thumbs import thumbnail
from pipeline.results import load_predictions, read_results
from pipeline.store.featuresets import FeatureSet, source_images

MAPS_HTML = "maps.html"
WILD_K = 10  # a wild photo goes where the median of its this many nearest training images is
HOVER_POINTS = 3000  # points with a thumbnail (the hover layer): every point would be 70,000 thumbnails
SEED = 0
_TOOLTIP = """<div style="width:230px"><img src="@thumb" style="width:84px;height:84px;object-fit:contain;
image-rendering:pixelated;float:left;margin-right:6px"><b>@label_name</b><br>@split #@index<br>
<span style="font-size:0.85em">@preds{safe}</span></div>"""


def maps_present(maps_dir: Path, sets: list[FeatureSet]) -> dict[str, list[np.ndarray]]:
    """{method: [coordinates per feature set]} for the methods every set has a map of, made from its features."""
    found = {}
    for m in DEFAULT_METHODS:
        coords = []
        for fs in sets:
            got = load_map(maps_dir, fs.name, m)
            if got is None or got[1].get("fingerprint") != fs.fingerprint:
                break
            coords.append(got[0])
        else:
            found[m] = coords
    return found


def write_map_view(out: Path, sets: list[FeatureSet], maps_dir: Path | None = None,
                   log: Callable[[str], None] = stderr) -> Path | None:
    """out/maps.html from the maps in `maps_dir` (default out/maps) of `sets` and the saved predictions in
    out; None (and a line) where there is no map of every set yet."""
    try:
        from bokeh.embed import file_html
        from bokeh.resources import INLINE
    except ImportError:
        raise PipelineError("maps.html needs Bokeh: pip install 'transfer-workbench[maps]'") from None
    out = Path(out)
    maps = maps_present(Path(maps_dir or out / "maps"), sets)
    if not maps:
        log("maps.html: no map of every feature set yet (`pipeline project` makes them)")
        return None
    ref = sets[0]
    n_train, n_test = len(ref.y_train), len(ref.y_test)
    n = n_train + n_test
    classes = list(ref.classes)
    preds, wrong = _saved_predictions(out, sets)
    rng = np.random.default_rng(SEED)
    hover = np.sort(rng.choice(n, size=min(HOVER_POINTS, n), replace=False))
    columns = _point_columns(sets, maps, classes)
    h = {k: [v[i] for i in hover] if isinstance(v, list) else v[hover] for k, v in columns.items()}
    h["thumb"] = _thumbnails(ref, hover)
    h["preds"] = [_predictions_html(int(i), n_train, preds, classes, sets[0].y_test) for i in hover]
    wild = wild_points(out, sets, maps, classes, n_train)
    note = _note(n_train, n_test, len(hover), wild)
    doc = _layout(columns, h, sets, maps, classes, wrong, hover, note, wild)
    page = file_html(doc, INLINE, title="pipeline maps: raw pixels vs embeddings")
    page = page.replace("<head>", f'<head>\n<meta name="pipeline-maps" content="{_page_key(out, sets)}">', 1)
    atomic_write(out / MAPS_HTML, page)
    log(f"maps.html: {len(maps)} method(s) x {len(sets)} feature sets, {n:,} points, {len(hover):,} with "
        f"thumbnails ({len(page) / 2**20:.1f} MB)")
    return out / MAPS_HTML


def _saved_predictions(out: Path, sets: list[FeatureSet]) -> tuple[list[tuple[dict, np.ndarray]], dict]:
    """([(record, its saved test predictions)] of each feature set's best model (by CV, as the galleries
    choose), {feature set: which images (train then test) that model gets wrong}; training images are never
    wrong)."""
    ref = sets[0]
    n_train = len(ref.y_train)
    records = [r for r in read_results(out) if r["feature_set"] in {fs.name for fs in sets}
               and r["labels_sha256"] == ref.labels_sha256 and r["classifier"] != "finetune"]
    preds = [(r, p) for r in records if (p := load_predictions(out, r)) is not None]
    best = best_records(records, out)
    preds = [(r, p) for r, p in preds if best.get(r["feature_set"]) is r]  # one line each on the card
    wrong = {r["feature_set"]: np.concatenate([np.zeros(n_train, bool), p != ref.y_test]) for r, p in preds}
    return preds, wrong


def _point_columns(sets: list[FeatureSet], maps: dict, classes: list) -> dict:
    """Every image's label, split, index and position on every map (train then test)."""
    ref = sets[0]
    n_train, n_test = len(ref.y_train), len(ref.y_test)
    y = np.concatenate([ref.y_train, ref.y_test])
    columns = {"label_name": [show_path(classes[v]) for v in y], "split": ["train"] * n_train + ["test"] * n_test,
               "index": list(range(n_train)) + list(range(n_test))}
    for m, coords in maps.items():
        for fs, xy in zip(sets, coords):
            columns[f"{fs.name}_{m}_x"], columns[f"{fs.name}_{m}_y"] = xy[:, 0], xy[:, 1]
    return columns


def _thumbnails(ref: FeatureSet, points: np.ndarray) -> list[str]:
    """The thumbnail of each point (train then test numbering) of the images `ref` was made from."""
    n_train = len(ref.y_train)
    ds = source_images(ref)
    splits = [("train", ds.splits.get("train")), ("test", ds.splits.get("test"))]

    def image(i: int):
        s, k = (splits[0], i) if i < n_train else (splits[1], i - n_train)
        return s[1].batch(k, k + 1)[0]

    return [thumbnail(image(int(i))) for i in points]


def _note(n_train: int, n_test: int, hovered: int, wild: dict | None) -> str:
    """The line above the maps: what the points are and how to use the page."""
    n = n_train + n_test
    return (f"{n:,} images ({n_train:,} train, {n_test:,} test); {hovered:,} of them, a seeded sample, carry a "
            f"thumbnail: hover the black-edged points. Select with the lasso or box tool: the same images light up "
            f"in every map."
            + (f" Stars: {len(wild['label_name'])} photos in the wild, each placed at the median position of its "
               f"{WILD_K} nearest training images in that feature set (the maps are not re-optimised for them)."
               if wild else ""))


def wild_points(out: Path, sets, maps, classes, n_train: int) -> dict | None:
    """The wild photos `pipeline evaluate` kept (galleries_wild.json and their features), placed on every map
    at the median 2-D position of their nearest training images; None without them (or with a damaged file:
    the next `pipeline evaluate` writes it again)."""
    try:
        return _wild_points(out, sets, maps, classes, n_train)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _wild_points(out: Path, sets, maps, classes, n_train: int) -> dict | None:
    g = read_json(out / WILD_GALLERY)
    if not g or not isinstance(g.get("features"), dict) or not isinstance(g.get("shown"), list) \
            or not all(fs.name in g["features"] for fs in sets):
        return None
    labels, shown = g["labels"], g["shown"]
    k = len(labels)
    items = {s["feature_set"]: {it["thumb"]: it for it in s["items"]} for s in g["galleries"]}
    cols = {"thumb": [g["thumbs"][f"wild:{i}"] for i in shown], "label_name": [show_path(classes[v]) for v in labels],
            "split": ["wild"] * k, "index": list(shown),
            "preds": ["<br>".join(f"best on {html.escape(short_name(s))}: "
                                  f"{html.escape(short_name(classes[it[f'wild:{i}']['pred']]))}"
                                  for s, it in items.items() if f"wild:{i}" in it) for i in shown]}
    for j, fs in enumerate(sets):
        try:
            W = np.load(out / g["features"][fs.name], allow_pickle=False)
        except (OSError, ValueError):
            return None
        if W.shape != (k, fs.X_train.shape[1]):
            return None
        idx, _ = nearest(fs.X_train, W, WILD_K)
        for m, coords in maps.items():
            xy = np.median(coords[j][:n_train][idx], axis=1)
            cols[f"{fs.name}_{m}_x"], cols[f"{fs.name}_{m}_y"] = xy[:, 0], xy[:, 1]
    return cols


def _predictions_html(i: int, n_train: int, preds, classes, y_test) -> str:
    """A test image, right or wrong by each feature set's best model (the wrong class named), as HTML
    (escaped): one short line per feature set; training images: none."""
    if i < n_train:
        return "training image"
    rows = []
    for r, p in preds:
        got = int(p[i - n_train])
        verdict = "right" if got == int(y_test[i - n_train]) else f"wrong ({html.escape(short_name(classes[got], 16))})"
        rows.append(f"{html.escape(short_name(r['feature_set'], 16))}: {verdict}")
    return "<br>".join(rows) or "no saved predictions"


def _layout(columns, h, sets, maps, classes, wrong, hover, note: str, wild: dict | None):
    from bokeh.layouts import column, row
    from bokeh.models import BooleanFilter, CDSView, ColumnDataSource, Div
    from bokeh.transform import factor_cmap
    from matplotlib.colors import to_hex

    names = [show_path(c) for c in classes]  # as the points' label_name
    palette = [to_hex(c) for c in class_colours(classes)]  # the report's static maps' colours, class by class
    src_all, src_hover = ColumnDataSource(columns), ColumnDataSource(h)
    src_wild = ColumnDataSource(wild) if wild else None
    n = len(columns["split"])
    all_filter = BooleanFilter([True] * n, name="all-filter")
    hover_filter = BooleanFilter([True] * len(hover), name="hover-filter")
    view_all, view_hover = CDSView(filter=all_filter), CDSView(filter=hover_filter)
    colour = factor_cmap("label_name", palette=palette, factors=names)
    first: dict[str, int] = {}
    for i, v in enumerate(columns["label_name"]):
        first.setdefault(v, i)
    legend = [(name, first[name]) for name in names if name in first]  # in class order, each by its first point
    rows = []
    for m in maps:
        rows.append(row(*[_map_figure(m, fs, legend if j == len(sets) - 1 else None, colour, (src_all, view_all),
                                      (src_hover, view_hover), src_wild) for j, fs in enumerate(sets)]))
    switch = _show_switch(wrong, hover, n, all_filter, hover_filter, src_all, src_hover)
    counts = ", ".join(f"{feature_title(s)} {int(w.sum()):,}" for s, w in wrong.items())
    info = Div(text=html.escape(f"Show: (test images wrong: {counts})" if wrong else "Show:"))
    return column(Div(text=html.escape(note)), row(info, switch), *rows, name="maps")


def _map_figure(m: str, fs: FeatureSet, legend: list | None, colour, every, hovered_points, src_wild):
    """One map (method `m`, feature set `fs`): every point (`every`: its source and view), the hover sample
    (black-edged, with the tooltip) and the wild photos (stars); the last in its row gets the `legend` (class,
    a point's row), beside the map in room of its own."""
    from bokeh.models import HoverTool, Legend, LegendItem
    from bokeh.plotting import figure

    (src_all, view_all), (src_hover, view_hover) = every, hovered_points
    f = figure(title=f"{METHODS[m].label}: {feature_title(fs.name)}", width=560 + (170 if legend else 0),
               height=520, tools="pan,wheel_zoom,box_select,lasso_select,tap,reset,save", active_scroll="wheel_zoom",
               output_backend="webgl")
    points = f.scatter(f"{fs.name}_{m}_x", f"{fs.name}_{m}_y", source=src_all, view=view_all, color=colour,
                       size=2.5, alpha=0.5, nonselection_alpha=0.05)
    r = f.scatter(f"{fs.name}_{m}_x", f"{fs.name}_{m}_y", source=src_hover, view=view_hover, color=colour,
                  size=6, line_color="black", line_width=0.6, nonselection_alpha=0.1, name="hover")
    hovered = [r]
    if src_wild is not None:
        hovered.append(f.scatter(f"{fs.name}_{m}_x", f"{fs.name}_{m}_y", source=src_wild, color=colour,
                                 marker="star", size=14, line_color="black", line_width=1, name="wild"))
    f.add_tools(HoverTool(renderers=hovered, tooltips=_TOOLTIP))
    if legend:
        items = [LegendItem(label=name, renderers=[points], index=i) for name, i in legend]
        f.add_layout(Legend(items=items, label_text_font_size="8pt", name="classes"), "right")
    f.axis.visible = False
    return f


def _show_switch(wrong: dict, hover, n: int, all_filter, hover_filter, src_all, src_hover):
    """The buttons that show all images, or only the test images one feature set's best model gets wrong."""
    from bokeh.models import CustomJS, RadioButtonGroup

    labels = ["all images"] + [f"test images wrong with {feature_title(s)}" for s in wrong]
    masks = {"all": [True] * n, **{s: w.tolist() for s, w in wrong.items()}}
    hover_masks = {k: [v[i] for i in hover] for k, v in masks.items()}
    switch = RadioButtonGroup(labels=labels, active=0, name="show")
    switch.js_on_change("active", CustomJS(
        args={"fa": all_filter, "fh": hover_filter, "sa": src_all, "sh": src_hover, "keys": list(masks),
              "masks": masks, "hmasks": hover_masks},
        code="const k = keys[cb_obj.active]; fa.booleans = masks[k]; fh.booleans = hmasks[k]; "
             "sa.change.emit(); sh.change.emit(); document.body.dataset.showing = k;"))
    return switch


def _page_key(out: Path, sets: list[FeatureSet]) -> str:
    """What a page shows: the feature sets (names, fingerprints) and the files it is drawn from (sizes, times)."""
    out = Path(out)
    files = sorted([*(out / "maps").glob("*.npy"), *(out / "predictions").glob("*.npy"), out / WILD_GALLERY])
    parts = [[fs.name, fs.fingerprint] for fs in sets] + [HOVER_POINTS, WILD_K] + [
        [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()] + [
        read_results(out)]  # the models' records (the label curve's, beside them in the file, are not shown)
    return content_key(parts)


def is_current(out: Path, sets: list[FeatureSet]) -> bool:
    """Whether maps.html shows these feature sets from the maps, records and predictions there now."""
    page = Path(out) / MAPS_HTML
    try:
        with open(page, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="pipeline-maps" content="{_page_key(out, sets)}">' in head
