"""Maps, figures, the report and `pipeline run`, on small synthetic data."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from helpers import assert_one_line_error, blobs, make_idx_dir, run_cli
from PIL import Image

from pipeline.classical.search import classify
from pipeline.classical.specs import CLASSIFIERS
from pipeline.data import FASHION_MNIST_CLASSES
from pipeline.errors import PipelineError
from pipeline.maps.methods import METHODS
from pipeline.maps.project import knn_accuracy, load_map, project, trust
from pipeline.render.figures import STUDY_COLOURS, draw_accuracy_bars, draw_maps
from pipeline.report import BENCHMARK, SECTIONS, write_report
from pipeline.results import read_curves, read_results
from pipeline.store.featuresets import FeatureSet


def feature_sets(n_train=150, n_test=50):
    """'raw': noisy blobs; 'toynet': tight blobs over the same labels (the embeddings separate better)."""
    Xr, y = blobs(n_train + n_test, dim=24, spread=4.0, seed=1)
    Xe, _ = blobs(n_train + n_test, dim=12, spread=0.5, seed=2)
    meta = {"dataset": {"content_sha256": "x"}}
    return [FeatureSet(X[:n_train], y[:n_train], X[n_train:], y[n_train:], dict(meta, config_hash=name), name=name,
                       classes=FASHION_MNIST_CLASSES, dataset="fashion-mnist")
            for name, X in (("raw", Xr), ("toynet", Xe))]


@pytest.fixture(scope="module")
def cpu_maps(tmp_path_factory):
    """Every map method of feature_sets() on the CPU libraries, made once for the module (openTSNE's FFT
    iterations take seconds a map): (its folder, what project returned). Copy the folder to change it."""
    out = tmp_path_factory.mktemp("cpu_maps")
    return out, project(feature_sets(), ["pca", "tsne", "umap"], out, n_jobs=2, log=lambda m: None)


@pytest.mark.slow
def test_maps_are_cached_scored_and_drawn(cpu_maps, tmp_path):
    import shutil

    sets = feature_sets()
    logs = []
    made, done = cpu_maps
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)  # the maps' files and times, as project left them
    assert list(done) == ["pca", "tsne", "umap"]
    for m in METHODS:
        for fs, meta in zip(sets, done[m]):
            coords, saved = load_map(tmp_path, fs.name, m)
            assert coords.shape == (200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
            assert saved == meta and meta["rows"] == 200 and meta["fingerprint"] == fs.fingerprint
            assert 0 <= meta["knn_accuracy"] <= 1 and 0 <= meta["trustworthiness"] <= 1
        raw, emb = done[m]
        assert emb["knn_accuracy"] > raw["knn_accuracy"]  # tight blobs separate better than noisy ones
        assert emb["knn_accuracy"] > 0.9
        png = tmp_path / f"{m}.png"
        with Image.open(png) as im:
            assert im.size[0] > im.size[1] > 200  # two panels side by side
    mtime = (tmp_path / "raw_tsne.npy").stat().st_mtime_ns
    logs.clear()
    project(sets, ["tsne"], tmp_path, log=logs.append)  # same inputs: from the cache
    assert (tmp_path / "raw_tsne.npy").stat().st_mtime_ns == mtime and all("cached" in m for m in logs)
    sets[0].meta["config_hash"] = "changed"  # other features: recomputed
    project(sets, ["pca"], tmp_path, log=logs.append)
    assert load_map(tmp_path, "raw", "pca")[1]["fingerprint"] == sets[0].fingerprint


@pytest.mark.slow
def test_array_api_backend_maps_with_torchdr_as_well_as_the_cpu_libraries(cpu_maps, tmp_path):
    """On the Array API backend (CPU tensors here; a CUDA GPU without cuML in use) t-SNE and UMAP are
    torchdr's on the backend's device; each map's record names it, and its 5-NN accuracy and trustworthiness
    stay within 0.02 of openTSNE's / umap-learn's on the same features where the classes separate. On the 200
    noisy raw rows one neighbour is 0.005 of 5-NN accuracy and torchdr's t-SNE is not bit-reproducible between
    runs (seen 0.835-0.90 against openTSNE's 0.845), so there the bound is 0.06; the 0.02 measured on 3,000
    Fashion-MNIST images is in docs/commands.md."""
    pytest.importorskip("torchdr")
    from pipeline.classical.backends import make_backend

    sets = feature_sets()
    _, cpu = cpu_maps  # openTSNE's and umap-learn's maps of the same sets
    torch_maps = project(sets, ["tsne", "umap"], tmp_path / "torch", backend=make_backend("cpu", array_api=True),
                         n_jobs=2, log=lambda m: None)
    for m, impl in (("tsne", "TorchdrTSNEMap"), ("umap", "TorchdrUMAPMap")):
        for ref, got in zip(cpu[m], torch_maps[m]):
            assert got["implementation"] == impl and ref["implementation"] != impl
            coords, _ = load_map(tmp_path / "torch", got["feature_set"], m)
            assert coords.shape == (200, 2) and np.isfinite(coords).all()
            for score in ("knn_accuracy", "trustworthiness"):
                bound = 0.02 if got["feature_set"] == "toynet" else 0.06
                assert abs(got[score] - ref[score]) <= bound, (m, got["feature_set"], score, got[score], ref[score])


def test_one_core_maps_run_at_once_in_worker_processes(tmp_path, monkeypatch):
    """A method that runs on one core (seeded UMAP; here PCA, marked so) maps the feature sets at once in
    worker processes, with the coordinates and records of mapping them one after another."""
    import joblib

    from pipeline.maps import methods
    from pipeline.maps import project as proj

    sets = feature_sets()
    project(sets, ["pca"], tmp_path / "in_turn", n_jobs=2)
    calls, real = [], joblib.Parallel
    monkeypatch.setattr(joblib, "Parallel", lambda **k: calls.append(k) or real(**k))
    monkeypatch.setattr(methods.PCAMap, "one_core", True, raising=False)
    monkeypatch.setattr(proj, "PARALLEL_ROWS", 100)
    logs = []
    done = project(sets, ["pca"], tmp_path / "at_once", n_jobs=2, log=logs.append)
    assert [c["n_jobs"] for c in calls] == [2] and len(logs) == 4  # two "mapping ...", two scores
    for fs, meta in zip(sets, done["pca"]):
        (a, ma), (b, mb) = (load_map(tmp_path / d, fs.name, "pca") for d in ("in_turn", "at_once"))
        assert np.allclose(a, b, atol=1e-4) and mb == meta
        assert {k: v for k, v in ma.items() if k != "seconds"} == {k: v for k, v in mb.items() if k != "seconds"}
    assert (tmp_path / "at_once" / "pca.png").is_file()
    calls.clear()
    project(sets[:1], ["pca"], tmp_path / "one_set", n_jobs=2)  # one map: nothing to run at once
    assert calls == []


UMAP_IN_A_PROCESS = """
import json, sys
import numpy as np
import umap.layouts, umap.umap_
from pipeline.maps.methods import UMAPMap
X = np.random.default_rng(0).normal(size=(150, 8)).astype(np.float32)
np.save(sys.argv[1], UMAPMap().fit_transform(X))
fs = [umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
      umap.layouts._nb_optimize_layout_euclidean_single_epoch]
print(json.dumps([[f.stats.cache_path, sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                  for f in fs]))
"""


@pytest.mark.slow
def test_umap_compiled_code_is_cached_on_disk_and_maps_stay_identical(tmp_path):
    """UMAP's numba functions keep their machine code in a folder per library version (the suite's shared
    PIPELINE_NUMBA_CACHE, see conftest), so a later process loads it instead of compiling (20-35 s on 2
    cores) and draws the same map bit for bit."""
    import os
    import shutil
    import subprocess
    import sys

    from pipeline.maps.methods import numba_cache_dir

    def umap_in_a_process(i, env):
        r = subprocess.run([sys.executable, "-W", "ignore", "-c", UMAP_IN_A_PROCESS, str(tmp_path / f"{i}.npy")],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.splitlines()[-1])

    # the first compiles and saves, unless an earlier process of the suite already did
    runs = [umap_in_a_process(i, os.environ) for i in range(2)]
    folder = numba_cache_dir()
    assert str(folder).startswith(os.environ["PIPELINE_NUMBA_CACHE"])
    assert all(path.startswith(str(folder)) and hits > 0 and misses == 0 for path, hits, misses in runs[1])
    assert any(p.suffix == ".nbi" for p in folder.rglob("*"))
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
    # a damaged cache (a copy of it, every file overwritten) is compiled past, not a failed map
    damaged = tmp_path / "damaged" / folder.name
    shutil.copytree(folder, damaged)
    for f in damaged.rglob("*.nb[ic]"):
        f.write_bytes(b"not a numba cache file")
    third = umap_in_a_process(2, {**os.environ, "PIPELINE_NUMBA_CACHE": str(damaged.parent)})
    assert all(path.startswith(str(damaged)) and misses > 0 for path, _, misses in third)
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "2.npy"))


def test_map_figure_content():
    sets = feature_sets(60, 20)
    rng = np.random.default_rng(0)
    panels = [(fs.name, rng.normal(size=(80, 2)), np.concatenate([fs.y_train, fs.y_test]),
               {"knn": 5, "knn_accuracy": 0.5, "trustworthiness": 0.9}) for fs in sets]
    fig = draw_maps(panels, FASHION_MNIST_CLASSES, "t-SNE")
    axes = [ax for ax in fig.axes if ax.collections]
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["t-SNE of raw pixels", "t-SNE of toynet embeddings"]
    for ax in axes:
        (points,) = ax.collections
        assert len(points.get_offsets()) == 80
        assert "5-NN accuracy in 2-D 0.500" in ax.get_title()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == FASHION_MNIST_CLASSES
    import matplotlib.colors as mc

    # the study's colour map: every point's colour is its class's
    y = panels[0][2][np.random.default_rng(0).permutation(80)]
    facecolours = axes[0].collections[0].get_facecolors()
    expected = np.array([mc.to_rgba(STUDY_COLOURS[FASHION_MNIST_CLASSES[c]]) for c in y])
    np.testing.assert_allclose(facecolours, expected)


def test_accuracy_bars_content():
    recs = [{"feature_set": s, "classifier": c, "label": CLASSIFIERS[c].label, "test_accuracy": a}
            for s, base in (("raw", 0.8), ("toynet", 0.9)) for c, a in (("lda", base), ("svc", base + 0.05))]
    fig = draw_accuracy_bars(recs, {"lda": (0.77, 0.81)})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["LDA", "RBF SVC"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "raw pixels", "toynet embeddings", "raw pixels (study)", "ResNet-18 (study)"]
    heights = [[p.get_height() for p in c] for c in ax.containers]
    np.testing.assert_allclose(heights[:2], [[0.8, 0.85], [0.9, 0.95]])
    assert heights[2][0] == pytest.approx(0.81) and np.isnan(heights[2][1])  # the study has no RBF SVC


class _Parsed(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.external, self.tables = set(), [], [], 0
        self.thumbs, self._in_thumb = [], False  # gallery thumbnails, apart from the figures

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "figure":
            self._in_thumb = "thumb" in (a.get("class") or "").split()
        if tag == "img":
            (self.thumbs if self._in_thumb else self.imgs).append(a.get("src", ""))
        if tag in ("script", "link", "iframe") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)
        self.tables += tag == "table"


def classify_records(out, feature_set: str) -> list[dict]:
    return [r for r in read_results(out) if r["feature_set"] == feature_set]


def test_report_is_self_contained_with_every_section(tmp_path):
    sets = feature_sets()
    classify(sets, ["lda", "logreg", "knn"], "quick", 3, out=tmp_path, n_jobs=1, progress=False)
    project(sets, ["pca"], tmp_path / "maps")
    html_path, md_path = write_report(tmp_path)
    page = _Parsed()
    page.feed(html_path.read_text())
    assert {k for k, _ in SECTIONS} <= page.ids
    assert page.external == []  # nothing fetched: no scripts, stylesheets or linked images
    # accuracy bars, each feature set's best confusion matrix (issue 42 row 21: the 2 x 3 grid, small at a
    # page's width, is linked instead), the PCA maps
    assert len(page.imgs) == 1 + 2 + 1
    assert 'href="figures/confusion.png"' in html_path.read_text()
    for fs in sets:
        best = max(classify_records(tmp_path, fs.name), key=lambda r: r["cv_mean"])
        assert f"![{best['label']} on " in md_path.read_text() and f"confusion/{fs.name}_{best['classifier']}.png" \
            in md_path.read_text()
    assert page.tables >= 3  # accuracy, details, map scores
    text = html_path.read_text()
    assert f"{BENCHMARK['logreg']:.3f}" in text and "0.8016" in text  # benchmark and study beside ours
    md = md_path.read_text()
    for _, heading in SECTIONS:
        assert f"## {heading}" in md
    assert "![PCA maps](maps/pca.png)" in md
    assert (tmp_path / "figures" / "accuracy.png").stat().st_size > 5000


def test_report_with_nothing_to_report(tmp_path, runner):
    assert_one_line_error(run_cli(runner, "report", "--out", tmp_path), "nothing to report", str(tmp_path))


def test_project_cli_bad_method(tmp_path, runner):
    d = make_idx_dir(tmp_path / "fm", n_train=40, n_test=20)
    r = run_cli(runner, "project", "--features", "raw", "--data-dir", d, "--methods", "pca,isomap",
                "--out", tmp_path / "maps")
    assert_one_line_error(r, "unknown map method isomap")


def test_maps_refuse_feature_sets_of_other_images(tmp_path):
    a, b = feature_sets()
    b = FeatureSet(b.X_train[:-1], b.y_train[:-1], b.X_test, b.y_test, b.meta, name="toynet", classes=b.classes,
                   dataset=b.dataset)
    with pytest.raises(PipelineError, match="different data"):
        project([a, b], ["pca"], tmp_path)


def test_scores_measure_separation():
    X, y = blobs(300, dim=2, spread=0.1)
    assert knn_accuracy(X, y) == 1.0 and trust(X, X) > 0.999  # X vs standardised X: near-identical neighbours
    noise = np.random.default_rng(0).normal(size=(300, 2))
    assert knn_accuracy(noise, y) < 0.3


@pytest.mark.slow
def test_pipeline_run_small_end_to_end(tmp_path, runner, monkeypatch, resnet18_file):
    data = make_idx_dir(tmp_path / "fm", n_train=90, n_test=40)
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data-dir", data, "--backbone", "resnet18", "--weights", resnet18_file, "--limit", 80,
            "--grid", "quick", "--classifiers", "lda,logreg,knn", "--methods", "pca,tsne,umap", "--n-jobs", 1]
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "reports" / "fashion-mnist-first80"
    info = json.loads((out / "run.json").read_text())
    assert [s["stage"] for s in info["stages"]] == ["extract", "classify", "curve", "galleries", "audit", "project",
                                                    "maps.html", "report"]
    assert all(s["state"] == "ran" for s in info["stages"])
    assert (tmp_path / "features" / "fashion-mnist" / "resnet18-first80" / "meta.json").exists()
    recs = read_results(out)
    assert {(x["feature_set"], x["classifier"]) for x in recs} == {
        (s, c) for s in ("raw", "resnet18") for c in ("lda", "logreg", "knn")}
    page = _Parsed()
    page.feed((out / "report.html").read_text())
    assert {k for k, _ in SECTIONS} <= page.ids and page.external == []
    assert len(page.imgs) == 1 + 1 + 2 + 3  # bars, the label curve, each set's best model's confusion matrix, 3 maps
    assert len(page.thumbs) > 20 and all(t.startswith("data:image/png;base64,") for t in page.thumbs)
    assert "resnet18-first80" in (out / "report.md").read_text()  # provenance names the store
    assert 'href="maps.html"' in (out / "report.html").read_text() and (out / "maps.html").is_file()
    assert "](maps.html)" in (out / "report.md").read_text()  # the interactive maps are found from the report

    # again: nothing recomputed
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    states = {s["stage"]: s["state"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert states == {"extract": "skipped", "classify": "skipped", "curve": "skipped", "galleries": "skipped",
                      "audit": "skipped", "project": "skipped", "maps.html": "skipped", "report": "ran"}
    first = json.loads((out / "run.json").read_text())["previous_runs"][-1]["stages"]
    assert [x["state"] for x in first] == ["ran"] * 8  # the first run's costs are kept

    # a crash left one result and one map missing: only those are redone
    (out / "maps" / "raw_umap.npy").unlink()
    json_path = out / "results.json"
    json_path.write_text(json.dumps([x for x in recs if (x["feature_set"], x["classifier"]) != ("raw", "knn")]))
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    stages = {s["stage"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert stages["classify"]["detail"].startswith("1 of 6") and stages["project"]["detail"].startswith("1 of 6")
    assert len(read_results(out)) == 6
    assert stages["curve"]["state"] == "ran" and len(read_curves(out)) == 2 * 3 * 5  # lost with the file: redone


def test_pipeline_run_bad_grid(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(runner, "run", "--grid", "huge", "--data-dir", tmp_path), "--grid 'huge'")
    assert not (tmp_path / "reports").exists() and not (tmp_path / "features").exists()  # nothing half-written


@pytest.mark.gpu
def test_cuml_maps_on_cuda(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("cuml", reason="cuML is not installed")
    from pipeline.classical.backends import make_backend
    from pipeline.maps.methods import CumlTSNEMap, make_method
    from pipeline.maps.project import is_cached

    backend = make_backend("cuda")
    assert isinstance(make_method("tsne", backend), CumlTSNEMap)
    sets = feature_sets()
    project(sets, ["tsne"], tmp_path)  # openTSNE on the CPU first: its map must not count for the cuML run
    assert is_cached(tmp_path, sets[0], "tsne") and not is_cached(tmp_path, sets[0], "tsne", backend)
    done = project(sets, ["tsne", "umap"], tmp_path, backend=backend)
    assert all(m["implementation"].startswith("Cuml") and m["knn_accuracy"] > 0.5 for ms in done.values() for m in ms)
    assert "ints_in_interval" not in done["tsne"][0]["params"]  # records the parameters cuML's t-SNE used


def _chromium():
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium here (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    """Where Chromium exists (CI installs it), the report renders offline: the screenshot shows the figures."""
    import subprocess

    sets = feature_sets()
    classify(sets, ["lda"], "quick", 3, out=tmp_path, n_jobs=1, progress=False)
    project(sets, ["pca"], tmp_path / "maps")
    html_path, _ = write_report(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,4000",
                    f"--screenshot={shot}", html_path.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert px.shape[:2] == (4000, 1200)
    colourful = (px.max(axis=2) - px.min(axis=2)) > 60  # saturated pixels: bars, map points, colour bars
    assert colourful.mean() > 0.01, colourful.mean()


# --- data strings in Markdown and figures -------------------------------------------------------------------

def test_data_strings_are_escaped_in_markdown(tmp_path):
    from pipeline.classical.search import classify
    from pipeline.report import write_report
    from pipeline.store.featuresets import FeatureSet

    classes = ["$5_$", "a|b", "*bold*", "<b>x</b>", "[link](http://x)", "_u_", "ok", "T-shirt/top", "8", "9"]
    X, y = blobs(100)
    Xt, yt = blobs(40, seed=1)
    fs = FeatureSet(X, y, Xt, yt, {"config_hash": "x"}, name="toy|net*", classes=classes, dataset="fashion-mnist")
    classify([fs], ["lda"], "quick", 3, out=tmp_path, progress=False)
    write_report(tmp_path)
    for name in ("results.md", "report.md"):
        md = (tmp_path / name).read_text()
        tables, current = [], []
        for line in md.splitlines() + [""]:  # each table: consecutive lines starting "|"
            if line.startswith("|"):
                current.append(line)
            elif current:
                tables, current = tables + [current], []
        assert tables and all(len(t) >= 2 for t in tables), name
        for t in tables:  # escaped pipes never add a column: every row of a table has its header's cells
            assert len({line.replace("\\|", "").count("|") for line in t}) == 1, (name, t)
        assert "toy\\|net\\*" in md and "toy|net*" not in md


def test_class_names_that_look_like_mathtext_draw(tmp_path):
    from pipeline.render.figures import confusion_figure

    path = confusion_figure(np.eye(3, dtype=int) * 5, ["$5_$", "a^b", r"\frac"], "t", tmp_path / "cm.png")
    assert path.stat().st_size > 5000



@pytest.mark.slow
def test_the_recorded_command_pastes_back_and_runs(tmp_path, runner, monkeypatch):
    """run.json (and the report) record the command as typed, quoted: `--train linear` stays --train, a flag
    stays a flag, a path with a space stays one argument. Pasted back, it runs (and skips what is done)."""
    import shlex

    data = make_idx_dir(tmp_path / "my data", n_train=200, n_test=40)
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data-dir", str(data), "--weights", "none", "--image-size", "32", "--grid", "quick",
            "--classifiers", "lda", "--methods", "pca", "--cv", "2", "--device", "cpu", "--train", "linear",
            "--overwrite", "--out", "rep ort"]
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    command = json.loads((tmp_path / "rep ort" / "run.json").read_text())["command"]
    assert command == shlex.join(["pipeline", *args])
    assert f"Command: {command}." in (tmp_path / "rep ort" / "report.md").read_text().replace("\\", "")
    pasted = shlex.split(command)
    assert pasted[0] == "pipeline"
    r = run_cli(runner, *pasted[1:])
    assert r.exit_code == 0, r.output
    assert "classify  skipped" in r.stdout


def test_one_progress_convention_results_on_stdout_and_no_empty_headings(tmp_path, runner, monkeypatch):
    """Issue 42 row 23. Off a terminal (here: the test's captured streams) no stage draws a carriage-return
    bar (the audit's did); long work says its rate in plain lines instead. The run's result, what each stage
    did, is on standard output; logs are on standard error; a rerun that skips a stage prints no heading for
    it."""
    from pipeline import console

    monkeypatch.setattr(console, "RATE_EVERY_S", 0.0, raising=False)  # a rate line at every step, not every 30 s
    data = make_idx_dir(tmp_path / "data", n_train=200, n_test=40)
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data-dir", data, "--weights", "none", "--image-size", "32", "--grid", "quick",
            "--classifiers", "lda", "--methods", "pca", "--cv", "2", "--device", "cpu"]
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stderr and "\r" not in r.stdout
    rates = [line for line in r.stderr.splitlines() if line.endswith(("img/s", "fit/s"))]
    assert any(line.startswith("pixel signatures train: ") for line in rates), r.stderr  # the audit's
    assert any(" fit/s" in line for line in rates) and any(" img/s" in line for line in rates), r.stderr
    assert "== classify" in r.stderr and "classify  ran" in r.stdout and "== " not in r.stdout
    again = run_cli(runner, *args)
    assert again.exit_code == 0, again.output
    for stage in ("classify", "galleries", "audit", "maps.html", "report"):
        assert f"== {stage}\n" not in again.stderr, again.stderr  # each said nothing: no heading
    assert "classify  skipped" in again.stdout and "audit  skipped" in again.stdout


def test_transfer_modes_pick_the_best_classical_model_by_cv_not_by_the_test_set():
    """Issue 42 row 3: the test set reports; it never chooses. The forest has the higher test accuracy, the
    SVC the higher CV score: the SVC is the feature set's best classical model, and the mode says how it was
    chosen."""
    from pipeline.report import transfer_points

    def rec(clf, label, cv, test):
        return {"feature_set": "raw", "classifier": clf, "label": label, "cv_mean": cv, "test_accuracy": test,
                "search_seconds": 1.0, "fit_seconds": 1.0}

    points = transfer_points([rec("rf", "Random forest", 0.80, 0.95), rec("svc", "RBF SVC", 0.90, 0.85)])
    assert [p["record"]["classifier"] for p in points] == ["svc"]
    assert points[0]["mode"] == "raw pixels + best classical by CV (RBF SVC)"


def test_a_map_of_the_wrong_shape_is_made_again_not_indexed(tmp_path):
    """Issue 42 row 15: a cached maps/*.npy of the wrong shape was an IndexError where the docs promise a
    recompute."""
    sets = feature_sets()
    project(sets, ["pca"], tmp_path, log=lambda m: None)
    np.save(tmp_path / "raw_pca.npy", np.zeros((5, 2), np.float32))
    logs = []
    project(sets, ["pca"], tmp_path, log=logs.append)
    assert load_map(tmp_path, "raw", "pca")[0].shape == (200, 2)
    assert not any("raw" in m and "cached" in m for m in logs) and any("toynet" in m and "cached" in m for m in logs)


def test_a_heading_shows_only_over_what_its_stage_says(monkeypatch):
    """A stage whose only output would be a progress bar off a terminal, which had nothing to say in 30 s
    (an image folder's raw pixels read again on a rerun), prints no heading; a stage that fails shows its
    heading above the error; a rate line shows it first."""
    import io

    from pipeline import console

    said = []
    with console.headed("== quiet", said.append):
        with console.progress_bar(10, file=io.StringIO()) as bar:
            bar.update(10)
    assert said == []
    with pytest.raises(ValueError), console.headed("== failing", said.append):
        raise ValueError("the stage's error")
    assert said == ["== failing"]
    monkeypatch.setattr(console, "RATE_EVERY_S", 0.0)
    lines = io.StringIO()
    monkeypatch.setattr(console.sys, "stderr", lines)
    with console.headed("== busy", console.stderr):
        with console.progress_bar(4, file=io.StringIO(), desc="raw pixels", unit="img") as bar:
            bar.update(2)
    shown = lines.getvalue().splitlines()
    assert shown[0] == "== busy" and shown[1].startswith("raw pixels: 2/4 img (50%), "), shown
