"""maps.html: the interactive maps, self-contained (opens offline), driven in headless Chromium: hovering a point
shows its thumbnail, the switch shows only the test images a model gets wrong."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import make_idx_dir, run_cli

from pipeline.data import read_idx, write_idx
from pipeline.results import read_results
from pipeline.store.featuresets import load_feature_set

pytest.importorskip("bokeh")
pytestmark = pytest.mark.slow  # every test reads the module's whole `pipeline run`
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("mapview")
    data = make_idx_dir(root / "data", n_train=120, n_test=60)
    for prefix in ("train", "t10k"):  # every third image noise only: models make mistakes to show
        path = data / f"{prefix}-images-idx3-ubyte.gz"
        x = read_idx(path, 3)
        x[::3] = np.random.default_rng(1).integers(0, 255, x[::3].shape, dtype=np.uint8)
        write_idx(path, x)
    args = ["run", "--data-dir", data, "--weights", "none", "--image-size", 32, "--grid", "quick", "--classifiers",
            "lda,logreg", "--methods", "pca", "--cv", 2, "--device", "cpu", "--n-jobs", 1, "--out", root / "rep"]
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        r = run_cli(CliRunner(), *args)
        assert r.exit_code == 0, r.output
        again = run_cli(CliRunner(), *args)
    finally:
        os.chdir(cwd)
    return root / "rep", args, again


def test_maps_html_is_self_contained_and_skipped_when_current(study):
    out, _, again = study
    page = (out / "maps.html").read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?:""", page)  # nothing fetched
    assert "PCA: raw pixels" in page and "PCA: resnet18 embeddings" in page
    states = {s["stage"]: s["state"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert again.exit_code == 0 and states["maps.html"] == "skipped"


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (Debian: apt-get install chromium)")
def test_hover_shows_a_thumbnail_and_the_switch_shows_the_misclassified(study, tmp_path):
    out, _, _ = study
    page = (out / "maps.html").read_text()
    probe = (Path(__file__).parent / "maps_probe.js").read_text()
    at = page.rfind("</body>")
    (tmp_path / "probe.html").write_text(page[:at] + probe + page[at:])
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--window-size=1400,1400", "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, dom[-500:]
    r = json.loads(found.group(1).replace("&quot;", '"'))
    assert "error" not in r, r
    assert r["plots"] == 2 and r["images_before"] == 0
    assert any(s.startswith("data:image/png;base64") for s in r["images_after"])  # the hovered point's thumbnail
    recs = read_results(out)
    best = max((x for x in recs if x["feature_set"] == "resnet18"), key=lambda x: x["cv_mean"])
    pred = np.load(out / "predictions" / f"resnet18_{best['classifier']}.npy")
    y_test = load_feature_set("raw", "fashion-mnist", out.parent / "data").y_test
    wrong = int((pred != y_test).sum())
    assert r["showing"] == "resnet18" and r["shown_before"] == 180 and r["shown_after"] == wrong > 0
    assert r["hovered_label"] in best["classes"]
    # issue 42 row 20: one palette (the report's), the legend in class order, a compact card
    from matplotlib.colors import to_hex

    from pipeline.render.figures import class_colours

    classes = best["classes"]
    assert r["legend"] == classes and r["factors"] == classes
    assert r["palette"] == [to_hex(c) for c in class_colours(classes)] and r["palette"][1] == "#808080"  # Trouser
    assert r["cards"] and all(w <= 240 and h <= 110 for w, h, _ in r["cards"]), r["cards"]


REPORT_PROBE = """<script>window.addEventListener("load", () => {
  const a = [...document.querySelectorAll("a")].find(e => e.getAttribute("href") === "maps.html");
  const imgs = [...document.querySelectorAll("#confusion img")]
    .map(i => [i.naturalWidth, i.getBoundingClientRect().width]);
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({link: a ? a.textContent : null, shown: !!(a && a.offsetParent),
    section: a ? a.closest("section").id : null, confusion: imgs,
    backticks: [...document.querySelectorAll("p")].filter(p => p.textContent.includes("`")).length});
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (Debian: apt-get install chromium)")
def test_report_links_the_interactive_maps_in_chromium(study, tmp_path):
    """Issue 42 rows 18, 21, 22 as a reader sees report.html in a browser: a visible link to maps.html in the
    maps section, confusion matrices drawn at a readable size (not shrunk into small multiples), and no
    caption showing raw backticks."""
    out, _, _ = study
    page = (out / "report.html").read_text()
    at = page.rfind("</body>")
    (out / "probe_report.html").write_text(page[:at] + REPORT_PROBE + page[at:])
    try:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1400",
                              "--virtual-time-budget=5000", "--dump-dom", (out / "probe_report.html").as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        (out / "probe_report.html").unlink()
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, dom[-500:]
    r = json.loads(found.group(1).replace("&quot;", '"'))
    assert r["link"] and r["shown"] and r["section"] == "maps", r
    assert r["confusion"] and all(shown >= 500 for _, shown in r["confusion"]), r["confusion"]
    assert r["backticks"] == 0, r


def test_wild_photos_are_placed_among_their_nearest_training_images(study, tmp_path, runner):
    """After `evaluate`, the next run draws the wild photos on every map: each at the median map position of
    its 10 nearest training images (cosine) in that feature set."""
    import os

    from PIL import Image

    from pipeline.apply.mapview import maps_present, wild_points
    from pipeline.data import FASHION_MNIST_CLASSES

    out0, args, _ = study
    root = tmp_path / "copy"
    shutil.copytree(out0.parent, root, symlinks=True)
    out = root / "rep"
    wild = tmp_path / "wild"
    x = read_idx(root / "data" / "t10k-images-idx3-ubyte.gz", 3)
    for c in (1, 8):  # Trouser, Bag
        (wild / FASHION_MNIST_CLASSES[c].replace("/", "_")).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(255 - x[i + 3 * c]).resize((60, 60)).save(wild / FASHION_MNIST_CLASSES[c] / f"{i}.png")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = [a if a != out0 else out for a in args]
        r = run_cli(runner, *args, "--wild", wild)
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    states = {s["stage"]: s["state"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert states["evaluate"] == "ran" and states["maps.html"] == "ran"
    assert "Stars: 6 photos in the wild" in (out / "maps.html").read_text()
    sets = [load_feature_set("raw", "fashion-mnist", root / "data"),
            load_feature_set(str(root / "features" / "fashion-mnist" / "resnet18-32px"), "fashion-mnist")]
    maps = maps_present(out / "maps", sets)
    got = wild_points(out, sets, maps, sets[0].classes, len(sets[0].y_train))
    g = json.loads((out / "galleries_wild.json").read_text())
    for j, fs in enumerate(sets):
        W = np.load(out / g["features"][fs.name])
        a = fs.X_train / np.linalg.norm(fs.X_train, axis=1, keepdims=True)
        b = W / np.linalg.norm(W, axis=1, keepdims=True)
        idx = np.argsort(-(b @ a.T), axis=1, kind="stable")[:, :10]
        want = np.median(maps["pca"][j][idx], axis=1)
        np.testing.assert_allclose(np.c_[got[f"{fs.name}_pca_x"], got[f"{fs.name}_pca_y"]], want, rtol=1e-5)
