"""A user's own images end to end: a folder study, saved models, `pipeline predict`, and the in-the-wild test
(`pipeline evaluate`, `--match-domain`). The images are drawn here: shapes of random colour, size and place."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import EXTRACT, SHAPES, assert_one_line_error, draw, make_idx_dir, run_cli, shapes_folder
from PIL import Image

from pipeline import load_features
from pipeline.data import dataset_slug, load_dataset
from pipeline.errors import PipelineError
from pipeline.results import read_curves, read_results


def study_args(data, weights) -> list:
    return ["run", "--dataset", "folder", "--data-dir", data, "--backbone", "resnet18", "--weights", weights,
            "--image-size", 64, "--raw-size", 16, "--grid", "quick", "--classifiers", "lda,logreg,rf", "--methods",
            "pca", "--n-jobs", 1]


@pytest.fixture(scope="module")
def study(tmp_path_factory, resnet18_file):
    """A folder study (class folders only: split 80/20), random-weight ResNet-18 at 64 px, three classifiers; raw
    pixels at 16 px (768 values: LDA's solve on the default 32 px's 3,072 takes 20 s of the suite)."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("study")
    data = shapes_folder(root / "shapes", 20)
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        r = run_cli(CliRunner(), *study_args(data, resnet18_file))
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    return root, data, root / "reports" / (dataset_slug("folder", data) + "-64px")


@pytest.mark.slow
def test_folder_study_end_to_end(study):
    root, data, out = study
    store = root / "features" / dataset_slug("folder", data) / "resnet18-64px"
    meta = json.loads((store / "meta.json").read_text())
    assert meta["dataset"]["split"]["test_fraction"] == 0.2 and meta["dataset"]["rows"] == {"train": 48, "test": 12}
    recs = read_results(out)
    assert {(r["feature_set"], r["classifier"]) for r in recs} == {
        (s, c) for s in ("raw", "resnet18") for c in ("lda", "logreg", "rf")}
    raw_card = json.loads((out / "models" / "raw_lda.json").read_text())
    assert raw_card["features"]["size"] == 16 and raw_card["features"]["channels"] == 3  # colour and gray mixed
    for r in recs:
        card = json.loads((out / "models" / f"{r['feature_set']}_{r['classifier']}.json").read_text())
        assert r["model"] == f"models/{r['feature_set']}_{r['classifier']}.skops"
        assert card["classes"] == list(SHAPES) and card["record"]["test_accuracy"] == r["test_accuracy"]
        assert card["features_fingerprint"] == r["features_fingerprint"]
    emb = json.loads((out / "models" / "resnet18_lda.json").read_text())["features"]
    assert emb["backbone"] == "resnet18" and emb["image_size"] == 64 and emb["weights"]["sha256"]
    md = (out / "report.md").read_text()
    assert md.startswith("# pipeline report: do pretrained embeddings beat raw pixels on image folder shapes?")
    assert "Fashion-MNIST" not in md and "(study)" not in md and "16x16 RGB" in md
    assert (out / "figures" / "confusion.png").exists()
    curves = read_curves(out)  # the folder's curve: 16 training images per class, so 1, 2, 5, 10 and all
    assert {(c["feature_set"], c["k"]) for c in curves} == {(s, k) for s in ("raw", "resnet18")
                                                            for k in (1, 2, 5, 10, "all")}
    assert "## How many labels do you need?" in md and (out / "figures" / "curve.png").exists()


@pytest.mark.slow
def test_rerun_keeps_saved_models_and_refits_a_missing_one(study, runner, monkeypatch, resnet18_file):
    from pipeline.models.saved import load_model

    root, data, out = study
    monkeypatch.chdir(root)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    (out / "models" / "raw_rf.skops").unlink()
    r = run_cli(runner, *study_args(data, resnet18_file))
    assert r.exit_code == 0, r.output
    stages = {s["stage"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert stages["extract"]["state"] == "skipped" and stages["classify"]["detail"].startswith("1 of 6")
    now = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    assert {k for k in now if now[k] != kept.get(k)} == {"raw_rf.skops", "raw_rf.json"}
    est, card = load_model(out / "models" / "raw_rf.skops")
    assert type(est[-1]).__name__ == "RandomForestClassifier" and card["classifier"] == "rf"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_equals_the_model_on_the_same_features(study, tmp_path, runner):
    from pipeline.embed.extract import extract
    from pipeline.embed.request import ExtractRequest
    from pipeline.models.saved import load_model
    from pipeline.store import load_features
    from pipeline.store.featuresets import load_feature_set

    root, data, out = study
    new = shapes_folder(tmp_path / "new", 4, seed=7)
    model = out / "models" / "resnet18_logreg.skops"
    r = run_cli(runner, "predict", "--model", model, new, "--out", tmp_path / "p.csv", "--top-k", 2)
    assert r.exit_code == 0, r.output
    rows = _rows(tmp_path / "p.csv")
    assert len(rows) == 12 and list(rows[0]) == ["path", "predicted", "score_kind", "top1", "top1_score", "top2",
                                                  "top2_score"]
    assert {x["score_kind"] for x in rows} == {"probability"}
    # the same images through the store's own path (extract with the store's settings), then the model
    est, card = load_model(model)
    ds = load_dataset("folder", new)  # class folders only: a test set
    meta = json.loads((root / "features" / dataset_slug("folder", data) / "resnet18-64px" / "meta.json").read_text())
    extract(ExtractRequest(dataset=ds.name, backbone="resnet18", weights=card["features"]["weights"]["file"],
                           image_size=64, out=tmp_path / "s", engine=meta["engine"]["engine"],
                           precision=meta["precision"]), dataset=ds, progress=False)
    X = load_features(tmp_path / "s").X_test
    expected = dict(zip(map(str, ds.splits["test"].files), np.asarray(card["classes"])[est.predict(X)]))
    assert {x["path"]: x["predicted"] for x in rows} == expected
    for x in rows:
        assert float(x["top1_score"]) >= float(x["top2_score"]) and x["top1"] == x["predicted"]

    # a raw-pixel model predicts from raw pixels made as in training: the training images give the same
    # predictions as the model on the training features
    raw = out / "models" / "raw_lda.skops"
    train_files = load_dataset("folder", data, test_fraction=0.2).splits["train"].files
    r = run_cli(runner, "predict", "--model", raw, *train_files[:9], "--out", tmp_path / "raw.csv")
    assert r.exit_code == 0, r.output
    est, card = load_model(raw)
    fs = load_feature_set("raw", "folder", data, raw_size=16)
    want = np.asarray(card["classes"])[est.predict(fs.X_train[:9])]
    assert [x["predicted"] for x in _rows(tmp_path / "raw.csv")] == list(want)
    assert {x["score_kind"] for x in _rows(tmp_path / "raw.csv")} == {"probability"}


@pytest.mark.slow
def test_predict_refuses_weights_it_cannot_have(study, tmp_path, runner):
    import shutil

    import torch
    import torchvision

    root, data, out = study
    models = tmp_path / "models"
    shutil.copytree(out / "models", models)
    card_path = models / "resnet18_lda.json"
    card = json.loads(card_path.read_text())
    card["features"]["weights"]["file"] = str(tmp_path / "gone.pth")
    card_path.write_text(json.dumps(card))
    img = shapes_folder(tmp_path / "img", 1)
    r = run_cli(runner, "predict", "--model", models / "resnet18_lda.skops", img, "--out", tmp_path / "p.csv")
    assert_one_line_error(r, "gone.pth", "--weights PATH")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    r = run_cli(runner, "predict", "--model", models / "resnet18_lda.skops", img, "--weights", other,
                "--out", tmp_path / "p.csv")
    assert_one_line_error(r, "are not the ones")
    assert not (tmp_path / "p.csv").exists()


def test_a_model_file_with_untrusted_types_is_not_loaded(tmp_path, runner):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    from pipeline.models.saved import FORMAT

    path = tmp_path / "evil.skops"
    sio.dump(FunctionTransformer(os.system), path)
    path.with_suffix(".json").write_text(json.dumps({"format": FORMAT, "feature_set": "raw", "classifier": "lda",
                                                     "classes": ["a", "b"], "dataset": "folder",
                                                     "features": {"kind": "raw", "size": 8, "channels": 1}}))
    img = shapes_folder(tmp_path / "img", 1)
    r = run_cli(runner, "predict", "--model", path, img)
    assert_one_line_error(r, "does not trust", "not loaded")
    r = run_cli(runner, "predict", "--model", tmp_path / "none.skops", img)
    assert_one_line_error(r, "no such model")


@pytest.mark.slow
def test_evaluate_in_the_wild(study, tmp_path, runner):
    import shutil

    root, data, out = study
    out2 = tmp_path / "study"
    shutil.copytree(out, out2)
    # names matched case-, space-, underscore-insensitively; a subset of the classes is fine
    wild = shapes_folder(tmp_path / "wild", 5, seed=3, names=("Circle", "SQUARE", "tri_angle"),
                         size=(150, 120), dark_on_light=True)
    r = run_cli(runner, "evaluate", "--folder", wild, "--out", out2)
    assert r.exit_code == 0, r.output
    recs = read_results(out2)
    for rec in recs:
        cm = np.asarray(rec["wild_confusion_matrix"])
        assert rec["wild_n"] == 15 and cm.shape == (3, 3) and cm.sum() == 15 and (cm.sum(1) == 5).all()
        assert rec["wild_accuracy"] == pytest.approx(np.trace(cm) / 15)
        assert rec["wild_source"]["classes"] == list(SHAPES) and "wild_matched_accuracy" not in rec
    md = (out2 / "report.md").read_text()
    assert "## In the wild" in md and "wild − test" in md and "figures/confusion_wild.png" in md
    assert (out2 / "figures" / "confusion_wild.png").stat().st_size > 10_000

    (wild / "hexagon").mkdir()
    r = run_cli(runner, "evaluate", "--folder", wild, "--out", out2)
    assert_one_line_error(r, "hexagon: matches no class", "circle, square, triangle")
    shutil.rmtree(wild / "hexagon")
    r = run_cli(runner, "evaluate", "--folder", wild, "--out", out2, "--match-domain")
    assert_one_line_error(r, "--match-domain knows the look of fashion-mnist")
    assert read_results(out2) == recs  # nothing lost, nothing half-written
    r = run_cli(runner, "evaluate", "--folder", wild, "--out", tmp_path / "empty")
    assert_one_line_error(r, "no saved models")


@pytest.mark.slow
def test_fashion_mnist_study_with_wild_photos_and_match_domain(tmp_path, runner, monkeypatch, resnet18_file):
    """`run --wild --match-domain`: the wild photos (dark garment drawn on a light background, bigger than
    28 px) are scored as they are and domain-matched; a rerun skips the evaluate stage."""
    from pipeline.data import FASHION_MNIST_CLASSES

    data = make_idx_dir(tmp_path / "fm", n_train=90, n_test=40)
    fm = load_dataset("fashion-mnist", data)
    wild = tmp_path / "wild"
    for c in (0, 1, 8):  # T-shirt/top as T-shirt_top, Trouser, Bag
        d = wild / FASHION_MNIST_CLASSES[c].replace("/", "_")
        d.mkdir(parents=True)
        for i in np.flatnonzero(fm.splits["test"].labels == c)[:3]:
            garment = Image.fromarray(255 - fm.splits["test"].images[i, 0]).resize((96, 96))
            photo = Image.new("L", (160, 130), 255)
            photo.paste(garment, (40, 20))
            photo.convert("RGB").save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data-dir", data, "--backbone", "resnet18", "--weights", resnet18_file, "--image-size", 48,
            "--grid", "quick", "--classifiers", "lda,logreg", "--methods", "pca", "--n-jobs", 1, "--wild", wild,
            "--match-domain"]
    r = run_cli(runner, *args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "reports" / "fashion-mnist-48px"
    recs = read_results(out)
    n = len(list(wild.rglob("*.png")))
    assert n >= 6 and all(rec["wild_n"] == n and rec["wild_matched_n"] == n for rec in recs)
    assert "grayscale" in recs[0]["wild_source"]["match_domain"]
    md = (out / "report.md").read_text()
    assert "domain-matched" in md and "figures/confusion_wild_matched.png" in md
    r = run_cli(runner, *args)
    stages = {s["stage"]: s["state"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert stages["evaluate"] == "skipped" and stages["classify"] == "skipped"


def test_match_domain_makes_a_fashion_mnist_look():
    from pipeline.data.domain import DOMAINS, match

    photo = np.full((3, 120, 200), 235, np.uint8)  # a light background
    photo[:, 30:90, 120:150] = 40  # a dark, tall garment off-centre
    out = match(photo, DOMAINS["fashion-mnist"])
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8
    assert out[:, :, :5].max() < 30 and out[:, :, -5:].max() < 30  # padded black at the sides
    assert out[0, 2:26, 12:16].min() > 200  # the garment bright, centred, filling the height
    cifar = match(photo, DOMAINS["cifar10"])
    assert cifar.shape == (3, 32, 32)


def test_folder_split_is_stratified_seeded_and_recorded(tmp_path):
    data = shapes_folder(tmp_path / "s", 11)
    a = load_dataset("folder", data, test_fraction=0.3)
    b = load_dataset("folder", data, test_fraction=0.3)
    tr, te = a.splits["train"], a.splits["test"]
    assert np.bincount(te.labels).tolist() == [3, 3, 3] and np.bincount(tr.labels).tolist() == [8, 8, 8]
    assert not set(tr.files) & set(te.files) and te.files == b.splits["test"].files
    assert a.describe()["split"]["test_fraction"] == 0.3 and a.content_hash == b.content_hash
    assert load_dataset("folder", data, test_fraction=0.2).content_hash != a.content_hash
    assert list(load_dataset("folder", data).splits) == ["test"]  # no fraction: class folders are a test set
    with pytest.raises(PipelineError, match="--test-fraction must be between 0 and 1"):
        load_dataset("folder", data, test_fraction=1.5)


def test_raw_pixels_of_a_folder_are_gray_when_every_image_is(tmp_path):
    from pipeline.store.featuresets import load_feature_set

    data = tmp_path / "g"
    rng = np.random.default_rng(0)
    for s in ("train", "test"):
        for c in SHAPES:
            (data / s / c).mkdir(parents=True)
            for i in range(2):
                draw(c, rng).convert("L").save(data / s / c / f"{i}.png")
    fs = load_feature_set("raw", "folder", data, raw_size=16)
    assert fs.X_train.shape == (6, 16 * 16) and fs.meta["raw"]["channels"] == 1
    assert 0 <= fs.X_train.min() and fs.X_train.max() <= 1
    assert load_feature_set("raw", "folder", data, raw_size=8).fingerprint != fs.fingerprint


@pytest.mark.slow
def test_predict_on_a_hostile_folder(study, tmp_path, runner):
    """Hidden entries and FIFOs skipped, a non-UTF-8 name written escaped, a broken image one line, no CSV."""
    import os

    root, data, out = study
    new = shapes_folder(tmp_path / "new", 2)
    rng = np.random.default_rng(5)
    (new / ".ipynb_checkpoints").mkdir()
    draw("circle", rng).save(new / ".ipynb_checkpoints" / "0.png")
    os.mkfifo(new / "circle" / "pipe.png")
    draw("circle", rng).save(new / "circle" / os.fsdecode(b"caf\xe9.png"))
    model = out / "models" / "raw_lda.skops"
    r = run_cli(runner, "predict", "--model", model, new, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    paths = [x["path"] for x in _rows(tmp_path / "p.csv")]
    assert len(paths) == 7 and any(p.endswith("caf\\udce9.png") for p in paths)  # escaped, one line
    assert not any(".ipynb_checkpoints" in p or "pipe" in p for p in paths)
    (new / "square" / "broken.jpg").write_bytes(b"not an image")
    r = run_cli(runner, "predict", "--model", model, new, "--out", tmp_path / "q.csv")
    assert_one_line_error(r, "broken.jpg: unreadable image")
    assert not (tmp_path / "q.csv").exists()
    r = run_cli(runner, "predict", "--model", model, new / "square" / "0.png", "--top-k", 0)
    assert_one_line_error(r, "--top-k must be at least 1")


def test_top_k_names_follow_the_classes_the_model_saw(tmp_path, runner):
    """A class with no training images has no score column: the top-k names must not shift onto it."""
    from pipeline.classical.search import classify
    from pipeline.store.featuresets import RAW_RESIZE, FeatureSet

    rng = np.random.default_rng(0)
    y_train = np.array([0, 2] * 30)
    X_train = (rng.random((60, 64)) * 0.2 + y_train[:, None] * 0.4).astype(np.float32)  # dark a, bright c
    y_test = np.array([0, 1, 2] * 5)
    X_test = (rng.random((15, 64)) * 0.2 + y_test[:, None] * 0.4).astype(np.float32)
    raw = {"size": 8, "channels": 1, "resize": RAW_RESIZE}
    fs = FeatureSet(X_train, y_train, X_test, y_test, {"dataset": {"content_sha256": "x"}, "raw": raw}, name="raw",
                    classes=["a", "b", "c"], dataset="folder")
    classify([fs], ["logreg"], "quick", 2, out=tmp_path / "out", n_jobs=1, progress=False)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("L", (20, 20), 10).save(imgs / "dark.png")
    Image.new("L", (20, 20), 240).save(imgs / "bright.png")
    r = run_cli(runner, "predict", "--model", tmp_path / "out" / "models" / "raw_logreg.skops", imgs,
                "--out", tmp_path / "p.csv", "--top-k", 3)
    assert r.exit_code == 0, r.output
    rows = {x["path"].rsplit("/", 1)[-1]: x for x in _rows(tmp_path / "p.csv")}
    assert rows["dark.png"]["predicted"] == rows["dark.png"]["top1"] == "a"
    assert rows["bright.png"]["predicted"] == rows["bright.png"]["top1"] == "c"
    assert "top3" not in rows["dark.png"]  # two classes were seen in training: two scores per image
    assert {rows["dark.png"]["top2"], rows["bright.png"]["top2"]} == {"a", "c"}


@pytest.mark.slow
def test_a_store_of_another_folder_is_refused(study, tmp_path):
    from pipeline.store.featuresets import load_feature_set

    root, data, out = study
    store = root / "features" / dataset_slug("folder", data) / "resnet18-64px"
    other = shapes_folder(tmp_path / "shapes", 3)
    with pytest.raises(PipelineError, match="holds features of the folder"):
        load_feature_set(str(store), "folder", other)
    assert load_feature_set(str(store), "folder", data).X_train.shape[0] == 48


def test_images_decode_as_a_viewer_shows_them(tmp_path):
    """Photos in the wild: a phone's EXIF rotation applied, a transparent background composited over white
    (not left black), a 16-bit PNG scaled to 8 bits (not clipped to white)."""
    from pipeline.data.images import decode_image as _decode

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:20] = (10, 10, 200, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    x = _decode(tmp_path / "cutout.png")
    assert x.shape == (3, 20, 30) and x[:, 0, 0].tolist() == [255, 255, 255] and x[:, 10, 15].tolist() == [10, 10, 200]
    im = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert _decode(tmp_path / "phone.jpg").shape == (3, 30, 10)
    Image.fromarray(np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).save(tmp_path / "deep.png")
    x = _decode(tmp_path / "deep.png")
    assert x.shape == (1, 10, 10) and x[0, 5, 5] == round(55 * 600 * 255 / 65535) and x.max() < 255


def test_a_huge_photo_decodes_no_larger_than_the_model_needs(tmp_path):
    """Issue 42 row 16: a batch of 7900 x 7900 photos held ~187 MB per image. Decoding now shrinks an image by
    the largest whole factor keeping its shorter side >= DECODE_SIDE (each pixel the mean of a k x k block), so
    a batch's memory no longer grows with the photos' size; smaller images decode exactly as before, and the
    16-bit scaling and EXIF rotation still apply."""
    from pipeline.data.dataset import Split
    from pipeline.data.images import DECODE_SIDE
    from pipeline.data.images import decode_image as _decode

    yy, xx = np.mgrid[0:6200, 0:4300]
    big = np.stack([(xx // 7) % 256, (yy // 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=1)
    batch = Split("test", np.zeros(3, np.int64), files=[tmp_path / "big.png"] * 3).batch(0, 3)
    k = 4300 // DECODE_SIDE  # 4
    assert [b.shape for b in batch] == [(3, 6200 // k, 4300 // k)] * 3
    assert sum(b.nbytes for b in batch) < 3 * big.nbytes / 15
    block = big[:6200 // k * k, :4300 // k * k].reshape(6200 // k, k, 4300 // k, k, 3).mean((1, 3))
    assert np.abs(batch[0].transpose(1, 2, 0).astype(float) - block).max() <= 1  # each pixel a block's mean
    small = big[:2047, :3000]
    Image.fromarray(small).save(tmp_path / "small.png")
    np.testing.assert_array_equal(_decode(tmp_path / "small.png"), small.transpose(2, 0, 1))  # untouched
    deep = (np.arange(2100 * 2200, dtype=np.uint32).reshape(2100, 2200) % 200).astype(np.uint16)  # dark 16-bit
    Image.fromarray(deep).save(tmp_path / "deep.png")
    x = _decode(tmp_path / "deep.png")
    assert x.shape == (1, 1050, 1100) and x.max() <= round(200 * 255 / 65535)  # scaled as 16-bit, not as 8
    sparse = np.zeros((2100, 2100), np.int32)
    sparse[::4, ::4] = 300  # values above 8 bits, which the block means would hide: still scaled as 16-bit
    Image.fromarray(sparse, "I").save(tmp_path / "sparse.tif")  # 32-bit integers: the values decide
    assert _decode(tmp_path / "sparse.tif").max() <= 1
    im = Image.fromarray(big[:2100, :4300])
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert _decode(tmp_path / "phone.jpg").shape == (3, 4300 // 2, 2100 // 2)  # reduced, then turned
    im.convert("P").save(tmp_path / "palette.png")
    assert _decode(tmp_path / "palette.png").shape == (3, 1050, 2150)  # a palette image is reduced too


# --- hostile image folders ----------------------------------------------------------------------------------

def _extract_folder(runner, root, out):
    return run_cli(runner, *EXTRACT, "--dataset", "folder", "--data-dir", root, "--out", out)


def test_hidden_entries_fifos_and_non_utf8_names(folder_dir, tmp_path, runner):
    import os

    from pipeline.data import load_dataset

    before = {s: len(v) for s, v in load_dataset("folder", folder_dir).splits.items()}
    for split in ("train", "test"):
        (folder_dir / split / ".ipynb_checkpoints").mkdir()
        (folder_dir / split / ".git").mkdir()
        (folder_dir / split / "shirt" / ".DS_Store").write_bytes(b"\x00\x01bud1")
        (folder_dir / split / "shirt" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    os.mkfifo(folder_dir / "train" / "boot" / "pipe.png")  # reading it would block forever
    odd = os.fsdecode(b"caf\xe9-latin1.png")  # not valid UTF-8 (surrogate-escaped by Python)
    (folder_dir / "train" / "boot" / "1.png").rename(folder_dir / "train" / "boot" / odd)
    ds = load_dataset("folder", folder_dir)
    assert {s: len(v) for s, v in ds.splits.items()} == before
    assert ds.classes == ["boot", "shirt", "trouser"] and ds.content_hash
    r = _extract_folder(runner, folder_dir, tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert load_features(tmp_path / "s").X_train.shape[0] == before["train"]


def test_decompression_bomb_and_truncated_jpeg_fail_up_front(folder_dir, tmp_path, runner):
    from PIL import Image

    bomb = folder_dir / "test" / "shirt" / "huge.png"
    Image.new("L", (10000, 10000)).save(bomb)  # ~100 KB on disk, 100 megapixels decoded
    assert bomb.stat().st_size < 200_000
    r = _extract_folder(runner, folder_dir, tmp_path / "s")
    assert_one_line_error(r, "huge.png: image too large", "decompression bomb")
    bomb.unlink()

    good = folder_dir / "train" / "boot" / "0.jpg"
    cut = folder_dir / "train" / "boot" / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    r = _extract_folder(runner, folder_dir, tmp_path / "s")
    assert_one_line_error(r, "cut.jpg: truncated JPEG")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()  # before any work



def test_an_output_folder_inside_the_image_folder_is_refused_up_front(tmp_path, runner, monkeypatch):
    """--out D (or inside D) for --data-dir D would write confusion/, figures/, maps/ among the user's class
    folders and read them back as classes: every command that writes refuses it before any work."""
    data = shapes_folder(tmp_path / "photos", 4)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    common = ["--dataset", "folder", "--data-dir", data]
    for args in (["run", *common, "--weights", "none", "--grid", "quick", "--out", data],
                 ["run", *common, "--weights", "none", "--out", data / "reports"],
                 ["extract", *common, "--weights", "none", "--out", data / "store"],
                 ["classify", "--features", "raw", *common, "--out", data / "circle"],
                 ["project", "--features", "raw", *common, "--methods", "pca", "--out", data],
                 ["train", "--features", "raw", *common, "--out", data],
                 ["finetune", *common, "--weights", "none", "--out", data / "square"]):
        r = run_cli(runner, *args)
        assert_one_line_error(r, "is inside the image folder", "its outputs would be read back as classes")
    monkeypatch.chdir(data)  # the default features/ and reports/ under the working folder: inside it too
    r = run_cli(runner, "extract", "--dataset", "folder", "--data-dir", ".", "--weights", "none")
    assert_one_line_error(r, "features/folder-", "is inside the image folder")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written among the photos
    wild = shapes_folder(tmp_path / "wild", 2)
    r = run_cli(runner, "evaluate", "--folder", wild, "--out", wild / "study")
    assert_one_line_error(r, "is inside the image folder")


def _cosine_nearest(A, B, k):
    """The k rows of A nearest each row of B by cosine distance, computed here with numpy (not the library)."""
    a = A / np.linalg.norm(A, axis=1, keepdims=True)
    b = B / np.linalg.norm(B, axis=1, keepdims=True)
    return np.argsort(-(b @ a.T), axis=1, kind="stable")[:, :k]


@pytest.mark.slow
def test_galleries_show_each_best_models_own_mistakes(study):
    """galleries.json (drawn by `pipeline run`): for each feature set's best model by CV, the images shown as
    wrong are the ones its saved model gets wrong on the store's test rows, the most confident first; raw vs
    embeddings counts agree with both models; retrieval precision@k agrees with a numpy cosine search; the
    report shows the thumbnails."""
    from pipeline.models.saved import load_model
    from pipeline.store.featuresets import load_feature_set

    root, data, out = study
    g = json.loads((out / "galleries.json").read_text())
    recs = read_results(out)
    sets = {"raw": load_feature_set("raw", "folder", data, raw_size=16),
            "resnet18": load_feature_set(str(root / "features" / dataset_slug("folder", data) / "resnet18-64px"),
                                         "folder")}
    preds = {}
    for s in g["galleries"]:
        best = max((r for r in recs if r["feature_set"] == s["feature_set"]), key=lambda r: r["cv_mean"])
        assert s["classifier"] == best["classifier"]
        fs = sets[s["feature_set"]]
        est, _ = load_model(out / "models" / f"{s['feature_set']}_{s['classifier']}.skops")
        pred = est.predict(fs.X_test)
        preds[s["feature_set"]] = pred
        wrong = set(np.flatnonzero(pred != fs.y_test))
        assert s["n_wrong"] == len(wrong) and s["n_test"] == len(fs.y_test)
        shown = [int(it["thumb"].split(":")[1]) for it in s["wrong"]]
        assert set(shown) <= wrong and len(shown) == min(16, len(wrong))
        assert [it["score"] for it in s["wrong"]] == sorted((it["score"] for it in s["wrong"]), reverse=True)
        for it, i in zip(s["wrong"], shown):
            assert (it["true"], it["pred"]) == (fs.y_test[i], pred[i])
        for p in s["pairs"]:
            assert p["count"] == int(((fs.y_test == p["true"]) & (pred == p["pred"])).sum()) > 0
    v = g["versus"]
    y = sets["raw"].y_test
    assert v["embeddings_only"]["count"] == int(((preds["resnet18"] == y) & (preds["raw"] != y)).sum())
    assert v["raw_only"]["count"] == int(((preds["raw"] == y) & (preds["resnet18"] != y)).sum())
    for r in g["retrieval"]:
        fs = sets[r["feature_set"]]
        idx = _cosine_nearest(fs.X_train, fs.X_test, r["k"])
        assert r["precision"] == pytest.approx((fs.y_train[idx] == fs.y_test[:, None]).mean(), abs=0.02)
    html = (out / "report.html").read_text()
    assert html.count('<figure class="thumb') >= 16 and "The images behind the numbers" in html
    assert "most confidently wrong" in (out / "report.md").read_text()


@pytest.mark.slow
def test_neighbors_finds_a_training_image_itself_and_writes_a_contact_sheet(study, tmp_path, runner):
    import csv as csv_

    from pipeline.data import dataset_slug, load_dataset

    root, data, out = study
    store = root / "features" / dataset_slug("folder", data) / "resnet18-64px"
    train = load_dataset("folder", data, test_fraction=0.2).splits["train"]
    queries = [train.files[i] for i in (0, 5, 9)]
    r = run_cli(runner, "neighbors", "--features", store, *queries, "-k", 3, "--out", tmp_path / "nb")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "nb" / "neighbors.csv", newline="") as f:
        rows = list(csv_.DictReader(f))
    assert len(rows) == 9
    firsts = [x for x in rows if x["rank"] == "1"]
    assert [int(x["train_index"]) for x in firsts] == [0, 5, 9]  # each image's nearest is itself
    assert all(float(x["distance"]) < 1e-3 for x in firsts) and all(x["path"] == x["query"] for x in firsts)
    assert (tmp_path / "nb" / "neighbors.html").read_text().count('<figure class="thumb') == 12
    assert str(queries[0]) in r.output
    r = run_cli(runner, "neighbors", "--features", store, queries[0], "-k", 0)
    assert_one_line_error(r, "-k must be at least 1")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run_cli(runner, "neighbors", "--features", store, bad)
    assert_one_line_error(r, "bad.jpg: unreadable image")


@pytest.mark.slow
def test_the_wild_photos_are_shown_with_their_predictions(study, tmp_path, runner):
    import shutil

    _, _, out = study
    out2 = tmp_path / "study"
    shutil.copytree(out, out2)
    wild = shapes_folder(tmp_path / "wild", 4, seed=5, size=(120, 90))
    assert run_cli(runner, "evaluate", "--folder", wild, "--out", out2).exit_code == 0
    g = json.loads((out2 / "galleries_wild.json").read_text())
    recs = {(r["feature_set"], r["classifier"]): r for r in read_results(out2)}
    for s in g["galleries"]:
        assert len(s["items"]) == 12 and s["accuracy"] == pytest.approx(recs[(s["feature_set"], s["classifier"])]
                                                                        ["wild_accuracy"])
        right = [it["true"] == it["pred"] for it in s["items"]]
        assert right == sorted(right)  # wrong ones first
    assert "in the wild:" in (out2 / "report.html").read_text()


@pytest.mark.slow
def test_a_folder_read_again_for_its_images_is_not_verified_again(study, monkeypatch):
    """Galleries, neighbors, export and maps.html read the store's folder again for paths and a few thumbnails:
    every file was verified when the features were made, so 70,000 files are not opened again (the labels are
    still checked)."""
    from pipeline.data import folder
    from pipeline.store.featuresets import load_feature_set, source_images

    root, data, out = study
    fs = load_feature_set(str(root / "features" / dataset_slug("folder", data) / "resnet18-64px"), "folder")
    monkeypatch.setattr(folder, "verify_image", lambda p: pytest.fail(f"verified again: {p}"))
    ds = source_images(fs)
    assert np.array_equal(ds.splits["train"].labels, fs.y_train) and len(ds.splits["test"].files) == len(fs.y_test)


def test_two_folders_of_one_name_never_share_or_replace_a_store(tmp_path, runner, monkeypatch):
    """`p1/my photos` and `p2/my_photos` slugged to one default folder, and the advice to --overwrite
    destroyed the first folder's store: now each has its own, and another folder's store is never replaced."""
    import shutil

    from pipeline.data import dataset_slug

    rng = np.random.default_rng(5)
    folders = [tmp_path / "p1" / "my photos", tmp_path / "p2" / "my_photos"]
    for k, root in enumerate(folders):
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8) // (k + 1)).save(root / c / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", "folder", "--backbone", "resnet18", "--weights", "none", "--image-size", 32,
              "--device", "cpu"]
    for root in folders:
        r = run_cli(runner, "extract", *common, "--data-dir", root)
        assert r.exit_code == 0, r.output
    stores = [tmp_path / "features" / dataset_slug("folder", root) / "resnet18" for root in folders]
    assert stores[0] != stores[1] and all((s / "meta.json").is_file() for s in stores)
    sources = [json.loads((s / "meta.json").read_text())["dataset"]["source"] for s in stores]
    assert [s.rsplit("/", 1)[-1] for s in sources] == ["my photos", "my_photos"]
    first = (stores[0] / "X_train.npy").read_bytes()
    shutil.rmtree(stores[1])
    for extra in ([], ["--overwrite"]):  # the first folder's store, named as --out for the second folder
        r = run_cli(runner, "extract", *common, "--data-dir", folders[1], "--out", stores[0], *extra)
        assert_one_line_error(r, "holds the features of", "my photos", "choose another --out")
        assert "--overwrite" not in r.stderr
    assert (stores[0] / "X_train.npy").read_bytes() == first


def test_wild_folders_match_exact_class_names_first_and_refuse_an_ambiguous_one(tmp_path):
    """Issue 42 row 4: study classes that differ only in case or separators. An exact folder name wins; a name
    that matches two classes loosely is refused in one line, never guessed."""
    from pipeline.apply.evaluate import wild_folder

    classes = ["Cat", "cat", "a b", "a_b"]
    wild = shapes_folder(tmp_path / "wild", 2, names=("Cat", "a b"))
    files, labels, names = wild_folder(wild, classes)
    assert names == {"Cat": "Cat", "a b": "a b"}
    assert [(f.parent.name, int(y)) for f, y in zip(files, labels)] == [("Cat", 0)] * 2 + [("a b", 2)] * 2
    loose = shapes_folder(tmp_path / "loose", 2, names=("CAT",))
    with pytest.raises(PipelineError, match=r"CAT: matches classes 'Cat', 'cat' only up to case and separators"):
        wild_folder(loose, classes)


def test_a_class_folder_name_that_is_not_utf8_runs_through_every_stage(tmp_path, runner, resnet18_file,
                                                                         monkeypatch):
    """Issue 42 row 9: a class folder named in Latin-1 (`caf\\xe9`) crashed classify, project and run in
    matplotlib (`set_text() ... 'caf\\udce9'`). Figures show its byte as \\xe9; the data keep the name."""
    import os

    odd = os.fsdecode(b"caf\xe9")  # not valid UTF-8: surrogate-escaped by Python
    data = shapes_folder(tmp_path / "shapes", 6, names=(odd, "tea", "tr_angle"))
    monkeypatch.chdir(tmp_path)  # the store under ./features
    r = run_cli(runner, "run", "--dataset", "folder", "--data-dir", data, "--backbone", "resnet18", "--weights",
                resnet18_file, "--image-size", 32, "--raw-size", 8, "--grid", "quick", "--classifiers", "lda",
                "--methods", "pca", "--n-jobs", 1, "--out", tmp_path / "o")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert {s["stage"]: s["state"] for s in info["stages"]}["project"] == "ran"
    assert all(s["state"] in ("ran", "skipped") for s in info["stages"]), info["stages"]
    assert read_results(tmp_path / "o")[0]["classes"][0] == odd
    assert "caf\\" in (tmp_path / "o" / "report.md").read_text()  # its byte written out, the file UTF-8
