"""Figures with awkward class names: a 250-character name (a folder name can be that long) is shortened for
display, one way on every figure, and the plots keep their size; the data files keep the whole name."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.data import FASHION_MNIST_CLASSES
from pipeline.render.figures import (
    DISPLAY_CHARS,
    _plt,
    draw_accuracy_bars,
    draw_confusion,
    draw_confusion_grid,
    draw_maps,
    short_names,
)

# 250 of the widest letter; then two that differ only in the middle, which shortening elides
LONG_CLASSES = ["W" * 250] + [f"a very long class name {'x' * 100} {i} {'x' * 100} that ends here" for i in (1, 2)] \
    + FASHION_MNIST_CLASSES[3:]


def _drawn(fig):
    """Lay out and draw `fig`; no layout engine may give up ('not applied', 'collapsed')."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fig.canvas.draw()
    return fig


def _inches(ax) -> tuple[float, float]:
    fig = ax.get_figure()
    _, _, w, h = ax.get_position().bounds
    return w * fig.get_figwidth(), h * fig.get_figheight()


def _inside_figure(fig, texts):
    box = fig.bbox
    renderer = fig.canvas.get_renderer()
    for t in texts:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, t.get_text()


def _panels(n=2):
    rng = np.random.default_rng(0)
    y = np.arange(80) % 10
    return [(name, rng.normal(size=(80, 2)), y, {"knn": 5, "knn_accuracy": 0.5, "trustworthiness": 0.9})
            for name in ("raw", "toynet")[:n]]


def test_short_names_are_bounded_distinct_and_leave_short_names_alone():
    shown = short_names(LONG_CLASSES)
    assert shown[3:] == FASHION_MNIST_CLASSES[3:]
    assert all(len(s) == DISPLAY_CHARS and "…" in s for s in shown[:3]) and all(len(n) > 240 for n in LONG_CLASSES[:3])
    assert shown[0].startswith("WWW") and shown[0].endswith("WWW")
    assert len(set(shown)) == len(shown)  # names that differ only in the elided part still read apart
    assert shown[1].startswith("a very long class name") and shown[1].endswith(" #2") and shown[2].endswith(" #3")


@pytest.mark.parametrize("n", [1, 2])
def test_map_legend_of_long_names_is_shortened_and_beside_the_plots(n):
    plt = _plt()
    short = _drawn(draw_maps(_panels(n), FASHION_MNIST_CLASSES, "PCA"))
    fig = _drawn(draw_maps(_panels(n), LONG_CLASSES, "PCA"))
    try:
        (legend,) = fig.legends
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == short_names(LONG_CLASSES) and all(len(t) <= DISPLAY_CHARS for t in texts)
        axes = [ax for ax in fig.axes if ax.collections]
        assert len(axes) == n
        for ax, ref in zip(axes, [ax for ax in short.axes if ax.collections]):
            w, h = _inches(ax)
            w0, h0 = _inches(ref)
            assert w >= 0.9 * w0 and h >= 0.9 * h0, ((w, h), (w0, h0))  # the plots keep their size
        # the legend lies beside the plots, not over them, and inside the figure
        renderer = fig.canvas.get_renderer()
        assert legend.get_window_extent(renderer).x0 >= max(ax.get_window_extent(renderer).x1 for ax in axes)
        _inside_figure(fig, legend.get_texts())
    finally:
        plt.close(fig)
        plt.close(short)


def test_confusion_matrix_ticks_of_long_names_are_shortened_and_the_matrix_keeps_its_size():
    plt = _plt()
    cm = np.eye(10, dtype=int) * 5
    fig = _drawn(draw_confusion(cm, LONG_CLASSES, "t"))
    short = _drawn(draw_confusion(cm, FASHION_MNIST_CLASSES, "t"))
    try:
        ax, ref = fig.axes[0], short.axes[0]
        labels = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]
        assert [t.get_text() for t in ax.get_yticklabels()] == short_names(LONG_CLASSES)
        _inside_figure(fig, labels)
        w, h = _inches(ax)
        w0, h0 = _inches(ref)
        assert w >= 0.85 * w0 and h >= 0.85 * h0, ((w, h), (w0, h0))  # the figure grows for the names instead
    finally:
        plt.close(fig)
        plt.close(short)


def test_confusion_grid_of_long_names_keeps_its_matrices():
    plt = _plt()

    def grid(classes):
        recs = [{"feature_set": s, "classifier": c, "classes": classes, "test_accuracy": 0.9,
                 "confusion_matrix": (np.eye(10, dtype=int) * 5).tolist()} for s in ("raw", "toynet")
                for c in ("lda", "svc")]
        return _drawn(draw_confusion_grid(recs))

    fig, short = grid(LONG_CLASSES), grid(FASHION_MNIST_CLASSES)
    try:
        mats = [ax for ax in fig.axes if ax.images]
        refs = [ax for ax in short.axes if ax.images]
        assert len(mats) == 4
        for ax, ref in zip(mats, refs):
            w, h = _inches(ax)
            w0, h0 = _inches(ref)
            assert w >= 0.85 * w0 and h >= 0.85 * h0, ((w, h), (w0, h0))
        ticks = [t for ax in mats for t in (*ax.get_xticklabels(), *ax.get_yticklabels()) if t.get_text()]
        assert ticks and all(len(t.get_text()) <= DISPLAY_CHARS for t in ticks)
        _inside_figure(fig, ticks + [a.label for ax in mats for a in (ax.xaxis, ax.yaxis) if a.label.get_text()])
    finally:
        plt.close(fig)
        plt.close(short)


def test_accuracy_bars_legend_of_a_long_feature_set_name_is_shortened():
    plt = _plt()
    name = "s" * 250
    recs = [{"feature_set": s, "classifier": c, "label": c.upper(), "test_accuracy": a}
            for s, base in (("raw", 0.8), (name, 0.9)) for c, a in (("lda", base), ("svc", base + 0.05))]
    fig = _drawn(draw_accuracy_bars(recs))
    try:
        (ax,) = fig.axes
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts[0] == "raw pixels" and len(texts[1]) <= DISPLAY_CHARS and "…" in texts[1]
        w, h = _inches(ax)
        assert w >= 0.5 * fig.get_figwidth() and h >= 0.4 * fig.get_figheight()
        _inside_figure(fig, ax.get_legend().get_texts())
    finally:
        plt.close(fig)


def test_a_figure_of_unchanged_inputs_is_not_drawn_again(tmp_path, monkeypatch):
    """A report rewritten from the same records keeps its figures (the file untouched); a changed record, or a
    file that is not the figure, is drawn again."""
    from pipeline.render import figures

    recs = [{"feature_set": s, "classifier": "lda", "label": "LDA", "classes": FASHION_MNIST_CLASSES,
             "test_accuracy": a, "confusion_matrix": (np.eye(10, dtype=int) * 5).tolist()}
            for s, a in (("raw", 0.8), ("toynet", 0.9))]
    path = tmp_path / "confusion.png"
    drawn = []
    real = figures.draw_confusion_grid
    monkeypatch.setattr(figures, "draw_confusion_grid", lambda *a: drawn.append(1) or real(*a))
    figures.confusion_grid(recs, path)
    first = path.stat().st_mtime_ns
    figures.confusion_grid(recs, path)
    assert len(drawn) == 1 and path.stat().st_mtime_ns == first
    recs[1]["test_accuracy"] = 0.91
    figures.confusion_grid(recs, path)
    assert len(drawn) == 2
    path.write_bytes(b"not a png")
    figures.confusion_grid(recs, path)
    assert len(drawn) == 3 and path.read_bytes().startswith(b"\x89PNG")


def test_a_map_figure_is_drawn_again_when_one_coordinate_moves(tmp_path):
    from pipeline.render.figures import map_figure

    panels = _panels()
    path = map_figure(panels, FASHION_MNIST_CLASSES, "PCA", tmp_path / "pca.png")
    first = path.stat().st_mtime_ns
    assert map_figure(panels, FASHION_MNIST_CLASSES, "PCA", path).stat().st_mtime_ns == first
    panels[1][1][40, 0] += 1e-9  # one point, far below what numpy prints of it
    assert map_figure(panels, FASHION_MNIST_CLASSES, "PCA", path).stat().st_mtime_ns != first
