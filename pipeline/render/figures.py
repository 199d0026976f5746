"""Figures (matplotlib, headless): drawn from numbers other stages computed; knows nothing of how."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from pipeline.console import content_key
from pipeline.files import replacing, utf8


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # class names are data: "$5_$" is text, not mathtext
    import matplotlib.pyplot as plt

    return plt


DISPLAY_CHARS = 40  # a class (or feature set) name longer than this is shortened on figures; files keep it whole


def short_name(name: str, limit: int = DISPLAY_CHARS) -> str:
    """`name` as a figure shows it: at most `limit` characters, the middle elided ("…") so that both ends, where
    names usually differ, stay readable. A folder name that is not valid UTF-8 shows its odd bytes as \\xe9."""
    name = printable(str(name))
    if len(name) <= limit:
        return name
    head = (limit - 1) * 2 // 3
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head):]}"


def printable(name: str) -> str:
    """`name` with the bytes of a non-UTF-8 file name (Python's surrogate escapes, which matplotlib, a PNG
    and a UTF-8 file cannot hold) written as \\xNN (files.utf8)."""
    return utf8(name).decode("utf-8")


def short_names(names: list[str], limit: int = DISPLAY_CHARS) -> list[str]:
    """`short_name` of each, still distinct: names that would shorten alike end with their position instead."""
    shown = [short_name(n, limit) for n in names]
    seen: dict[str, int] = {}
    for s in shown:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 or len(n) <= limit else short_name(n, limit - len(f" #{i + 1}")) + f" #{i + 1}"
            for i, (n, s) in enumerate(zip(names, shown))]


def confusion_figure(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    return _save(draw_confusion(cm, classes, title), path)


def draw_confusion(cm: np.ndarray, classes: list[str], title: str):
    """Row-normalised confusion matrix (true class per row) with counts in the cells. Returns the figure."""
    plt = _plt()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = short_names(classes)
    ax.set_xticks(range(len(classes)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), names, fontsize=8)
    extra = _label_inches(fig, ax.get_yticklabels()) - 0.8  # the size suits names as long as Fashion-MNIST's
    if extra > 0:  # longer ones: a larger figure, not a smaller matrix
        fig.set_size_inches(6.6 + extra * 1.1, 5.6 + extra * 0.8)  # the x labels slant: ~0.7 of their width
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    return fig


def draw_confusion_grid(records: list[dict], key: str = "confusion_matrix", accuracy_key: str = "test_accuracy"):
    """Small multiples: one row-normalised confusion matrix per record, a row per feature set and a column
    per classifier, on one colour scale; class names on the outer axes only. Returns the figure."""
    plt = _plt()
    sets = list(dict.fromkeys(r["feature_set"] for r in records))
    clfs = list(dict.fromkeys(r["classifier"] for r in records))
    by = {(r["feature_set"], r["classifier"]): r for r in records}
    classes = short_names(records[0]["classes"])
    cell = 2.1 if len(classes) <= 12 else 2.8
    fig, axes = plt.subplots(len(sets), len(clfs), figsize=(cell * len(clfs) + 1.8, cell * len(sets) + 1.6),
                             dpi=90, squeeze=False, layout="constrained")
    im = None
    for i, s in enumerate(sets):
        for j, c in enumerate(clfs):
            ax = axes[i][j]
            r = by.get((s, c))
            ax.set_xticks([])
            ax.set_yticks([])
            if r is None or key not in r:
                ax.axis("off")
                continue
            cm = np.asarray(r[key], dtype=float)
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"{r.get('label', c)}\n{short_name(feature_title(s))}: {r[accuracy_key]:.3f}", fontsize=7)
            if j == 0:
                ax.set_yticks(range(len(classes)), classes, fontsize=5)
                ax.set_ylabel("true", fontsize=7)
            if i == len(sets) - 1:
                ax.set_xticks(range(len(classes)), classes, fontsize=5, rotation=90)
                ax.set_xlabel("predicted", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="fraction of true class")
    ticks = [t for ax in axes[:, 0] for t in ax.get_yticklabels()]
    extra = _label_inches(fig, ticks) - 0.5  # names longer than Fashion-MNIST's: a larger figure, not smaller cells
    if extra > 0:
        fig.set_size_inches(fig.get_figwidth() + extra, fig.get_figheight() + extra)
    return fig


def confusion_grid(records: list[dict], path: Path, key: str = "confusion_matrix",
                   accuracy_key: str = "test_accuracy") -> Path:
    return _drawn(path, [records, key, accuracy_key], lambda: draw_confusion_grid(records, key, accuracy_key))


# The original study's colour per Fashion-MNIST class (its Figures 4 and 5); other datasets use tab10/tab20.
STUDY_COLOURS = {"Ankle boot": "green", "Bag": "orchid", "Coat": "cyan", "Dress": "magenta", "Pullover": "blue",
                 "Sandal": "red", "Shirt": "lime", "Sneaker": "yellow", "Trouser": "gray", "T-shirt/top": "orange"}


def class_colours(classes: list[str]) -> list:
    if all(c in STUDY_COLOURS for c in classes):
        return [STUDY_COLOURS[c] for c in classes]
    cmap = _plt().get_cmap("tab10" if len(classes) <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(len(classes))]


def feature_title(name: str) -> str:
    return "raw pixels" if name == "raw" else f"{name} embeddings"


def draw_maps(panels, classes: list[str], method: str):
    """One scatter per feature set, side by side, coloured by class; `panels` is a list of
    (feature set name, coords (n, 2), labels (n,), meta with knn_accuracy/trustworthiness). Returns the figure."""
    plt = _plt()
    from matplotlib.lines import Line2D

    colours = np.array(class_colours(classes), dtype=object)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.6, 5.0), dpi=80, squeeze=False)
    for ax, (name, coords, y, meta) in zip(axes[0], panels):
        order = np.random.default_rng(0).permutation(len(y))  # no class painted over the others by draw order
        size = float(np.clip(4000 / max(len(y), 1), 0.4, 12))
        ax.scatter(coords[order, 0], coords[order, 1], c=list(colours[y[order]]), s=size, linewidths=0,
                   rasterized=True)
        ax.set_title(f"{method} of {short_name(feature_title(name))}\n{meta['knn']}-NN accuracy in 2-D "
                     f"{meta['knn_accuracy']:.3f}, trustworthiness {meta['trustworthiness']:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method} 1", fontsize=8)
        ax.set_ylabel(f"{method} 2", fontsize=8)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, markersize=6, label=n)
               for n, c in zip(short_names(classes), colours)]
    legend = fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, title="class")
    # the legend gets the width its names need, the figure growing by as much: the plots keep their size
    need = max(1.5, legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi + 0.1)
    fig.set_figwidth(5.2 * len(panels) + 0.1 + need)
    fig.tight_layout(rect=(0, 0, 1 - need / fig.get_figwidth(), 1))
    return fig


def map_figure(panels, classes: list[str], method: str, path: Path) -> Path:
    return _drawn(path, [panels, classes, method], lambda: draw_maps(panels, classes, method))


def draw_accuracy_bars(records: list[dict], study: dict | None = None):
    """Grouped bars: test accuracy per classifier, one bar per feature set (and the study's, when given as
    {classifier: (resnet, raw)}). Returns the figure."""
    plt = _plt()
    sets = list(dict.fromkeys(r["feature_set"] for r in records))
    clfs = list(dict.fromkeys(r["classifier"] for r in records))
    labels = {r["classifier"]: r.get("label", r["classifier"]) for r in records}
    by = {(r["feature_set"], r["classifier"]): r["test_accuracy"] for r in records}
    series = [(short_name(feature_title(s)), [by.get((s, c), np.nan) for c in clfs], None, f"C{i}")
              for i, s in enumerate(sets)]
    if study:  # the study's raw pixels in our raw colour, hatched
        raw = f"C{sets.index('raw')}" if "raw" in sets else f"C{len(sets)}"
        series += [("raw pixels (study)", [study.get(c, (np.nan, np.nan))[1] for c in clfs], "//", raw),
                   ("ResNet-18 (study)", [study.get(c, (np.nan, np.nan))[0] for c in clfs], "//", "C3")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(clfs) + 2), 4.2), dpi=90)
    width = 0.8 / len(series)
    x = np.arange(len(clfs))
    for i, (name, vals, hatch, colour) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name, hatch=hatch,
                      color=colour, alpha=0.45 if hatch else 1.0)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(x, [labels[c] for c in clfs], fontsize=8)
    vals = np.array([v for _, vs, _, _ in series for v in vs], dtype=float)
    lo = np.nanmin(vals) if np.isfinite(vals).any() else 0.0
    ax.set_ylim(max(0.0, lo - 0.08), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per classifier: raw pixels vs embeddings", fontsize=10, pad=24)
    ax.legend(fontsize=7, ncol=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def accuracy_figure(records: list[dict], path: Path, study: dict | None = None) -> Path:
    return _drawn(path, [records, study], lambda: draw_accuracy_bars(records, study))


def draw_learning_curve(rec: dict):
    """Loss and accuracy per epoch (train and validation) of a trained head or fine-tuned network, the kept
    (best) epoch marked. Returns the figure."""
    plt = _plt()
    h = rec["history"]
    ep = [e["epoch"] for e in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.2), dpi=90)
    a1.plot(ep, [e["train_loss"] for e in h], "o-", ms=3, label="train")
    a1.plot(ep, [e["val_loss"] for e in h], "o-", ms=3, label="validation")
    a1.set_ylabel("loss (train: label-smoothed, with dropout)")
    a2.plot(ep, [e["train_accuracy"] for e in h], "o-", ms=3, label="train")
    a2.plot(ep, [e["val_accuracy"] for e in h], "o-", ms=3, label="validation")
    a2.set_ylabel("accuracy")
    for ax in (a1, a2):
        ax.axvline(rec["best_epoch"], color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{rec['label']} on {rec['feature_set']}: epoch {rec['best_epoch']} kept "
                 f"(stopped by {rec['stopped_by']}), test accuracy {rec['test_accuracy']:.4f}, "
                 f"{rec.get('device_name') or rec.get('device')}", fontsize=8)
    fig.tight_layout()
    return fig


def learning_curve(rec: dict, path: Path) -> Path:
    return _save(draw_learning_curve(rec), path)


def draw_transfer_modes(rows: list[dict]):
    """Test accuracy against wall-clock training time (log scale), one labelled point per transfer mode, its
    marker the device it ran on. `rows`: dicts with mode, test_accuracy, seconds, device. Returns the figure."""
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.4, 4.8), dpi=90)
    devices = list(dict.fromkeys(r["device"] for r in rows))
    markers = "osD^v"
    for d_i, device in enumerate(devices):
        pts = [r for r in rows if r["device"] == device]
        ax.scatter([r["seconds"] for r in pts], [r["test_accuracy"] for r in pts], s=36,
                   marker=markers[d_i % len(markers)], color=f"C{d_i}", label=device)
        for r in pts:
            ax.annotate(r["mode"], (r["seconds"], r["test_accuracy"]), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
    xs = [r["seconds"] for r in rows]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.6, max(xs) * 6)  # room for the labels on the right
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} s"))
    ax.set_xlabel("training wall-clock time (log scale; classical models: grid search + refit)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Transfer modes: test accuracy vs training time", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", title="device", title_fontsize=7)
    fig.tight_layout()
    return fig


def transfer_figure(rows: list[dict], path: Path) -> Path:
    return _drawn(path, rows, lambda: draw_transfer_modes(rows))


def draw_label_curves(panels: list[dict]):
    """Test accuracy against labelled training images per class (log axis), one panel per classifier, one
    line per feature set with a band of +-1 standard deviation over the draws; `panels`: [{"title", "lines":
    [{"title", "x", "mean", "std", "dashed": raw pixels' full-data accuracy or None}]}], the lines in the
    feature sets' order (their colours). Returns the figure."""
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=90, sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, line in enumerate(panel["lines"]):
            if not line["x"]:
                continue
            x, m, sd = (np.array(line[k], dtype=float) for k in ("x", "mean", "std"))
            ax.plot(x, m, "o-", ms=3, color=f"C{i}", label=short_name(line["title"]))
            ax.fill_between(x, m - sd, m + sd, color=f"C{i}", alpha=0.2, lw=0)
            if line["dashed"] is not None:
                ax.axhline(line["dashed"], color=f"C{i}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("labelled training images per class (log; last point: all)")
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test accuracy (mean ± 1 sd over draws)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("How many labels do you need? (dashed: raw pixels with every label)", fontsize=10)
    fig.tight_layout()
    return fig


def curve_figure(panels: list[dict], path: Path) -> Path:
    return _drawn(path, panels, lambda: draw_label_curves(panels))


def _label_inches(fig, texts) -> float:
    """The widest of `texts` (unrotated tick labels) in inches, as `fig` will draw them."""
    renderer = fig.canvas.get_renderer()
    return max((t.get_window_extent(renderer).width for t in texts), default=0.0) / fig.dpi


def _save(fig, path: Path, key: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", **({"metadata": {KEY: key}} if key else {}))
    finally:
        _plt().close(fig)
    return path


KEY = "pipeline-figure-key"  # a PNG text chunk: what the figure was drawn from


def _drawn(path: Path, inputs, draw) -> Path:
    """`draw()` saved as `path`, unless `path` already holds the figure of these `inputs` drawn by this code
    (a report rewritten from unchanged records redraws nothing)."""
    from PIL import Image

    key = content_key([inputs, _code_key()], default=_as_key)
    try:
        with Image.open(path) as im:
            if im.info.get(KEY) == key:
                return Path(path)
    except (OSError, ValueError):  # none yet, or not a PNG it can read: drawn
        pass
    return _save(draw(), path, key)


def _as_key(obj) -> str:
    """An array (map coordinates, labels) as its exact content, not numpy's elided text."""
    if isinstance(obj, np.ndarray):
        return f"{obj.dtype}{obj.shape}:{hashlib.sha256(np.ascontiguousarray(obj).data).hexdigest()}"
    return str(obj)


@functools.cache
def _code_key() -> str:
    """This module's source and matplotlib's version: a change to either draws every figure again."""
    import matplotlib

    return content_key([Path(__file__).read_text(), matplotlib.__version__])
