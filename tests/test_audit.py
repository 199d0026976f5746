"""`pipeline audit`: planted problems in a folder of shapes (a photo copied into both splits, the same photo
re-encoded as JPEG at another quality and resized, a centre crop of a photo, an image moved into the wrong
class folder, a blank image) are each found, and a clean folder gets nothing flagged. EfficientNet-Lite0's
real weights (offline): the check is about what a user's embeddings see."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli, shapes_folder
from PIL import Image

from pipeline.audit import duplicates as dup
from pipeline.data import dataset_slug

LITE0 = ["--backbone", "efficientnet_lite0", "--device", "cpu", "--precision", "fp32", "--batch-size", 16]


def _folder(root, planted: bool):
    shapes_folder(root / "train", 14, seed=1, size=(96, 96))
    shapes_folder(root / "test", 6, seed=2, size=(96, 96))
    if planted:
        shutil.copy(root / "train/circle/002.webp", root / "test/circle/copy.webp")
        with Image.open(root / "train/square/000.jpg") as im:
            im.resize((130, 130)).save(root / "test/square/reencoded.jpg", quality=55)
        with Image.open(root / "train/triangle/001.png") as im:
            im.crop((5, 5, 91, 91)).save(root / "test/triangle/cropped.png")
        shutil.move(root / "train/triangle/004.jpg", root / "train/circle/moved.jpg")
        Image.new("RGB", (96, 96), (128, 128, 128)).save(root / "train/square/blank.png")
    return root


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Both folders extracted with Lite0 and audited through the CLI: {name: (cwd, study folder, stdout)}."""
    from click.testing import CliRunner

    out = {}
    for name, planted in (("planted", True), ("clean", False)):
        root = tmp_path_factory.mktemp(name)
        _folder(root / name, planted)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            runner = CliRunner()
            r = run_cli(runner, "extract", "--dataset", "folder", "--data-dir", name, *LITE0)
            assert r.exit_code == 0, r.output
            r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", name, "--features", "efficientnet_lite0",
                        "--device", "cpu")
            assert r.exit_code == 0, r.output
        finally:
            os.chdir(cwd)
        out[name] = (root, root / "reports" / dataset_slug("folder", root / name), r.stdout)
    return out


def _planted_store(root):
    return root / "features" / dataset_slug("folder", root / "planted") / "efficientnet_lite0"


def _calibrated_as_before(monkeypatch, study):
    """The store's calibration (Lite0 embedding its images' variants: the audit's costliest step) as the
    fixture's audit of this store measured it: a test of what follows it need not embed them again."""
    from pipeline.audit import check

    measured = json.loads((study / "audit.json").read_text())["calibration"]
    monkeypatch.setattr(check, "calibrate", lambda fs, *a, **k: measured)


def _flagged(study) -> dict:
    doc = json.loads((study / "audit.json").read_text())
    with open(study / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return doc, rows


def test_planted_problems_are_each_found(audited):
    root, study, stdout = audited["planted"]
    doc, rows = _flagged(study)
    name = lambda r: r["file"].replace("\\", "/")  # noqa: E731  (relative to the image folder)
    groups = {}
    for r in rows:
        if r["problem"].endswith("_duplicate"):
            groups.setdefault(r["group"], set()).add((r["problem"], name(r)))
    assert sorted(map(sorted, groups.values())) == sorted([
        [("exact_duplicate", "test/circle/copy.webp"), ("exact_duplicate", "train/circle/002.webp")],
        [("near_duplicate", "test/square/reencoded.jpg"), ("near_duplicate", "train/square/000.jpg")],
        [("near_duplicate", "test/triangle/cropped.png"), ("near_duplicate", "train/triangle/001.png")]])
    issues = [(name(r), r["label"], r["suggested"]) for r in rows if r["problem"] == "label_issue"]
    assert issues == [("train/circle/moved.jpg", "circle", "triangle")]
    assert [name(r) for r in rows if r["problem"] == "outlier"] == ["train/square/blank.png"]
    c = doc["duplicates"]["counts"]
    assert (c["exact_groups"], c["near_groups"], c["groups_across"], c["test_with_train_twin"]) == (1, 2, 3, 3)
    assert doc["label_issues"]["share"]["train"] == pytest.approx(1 / 43, abs=1e-4)
    # every threshold the verdicts came from is recorded, and the calibration's copies pass the pixel check
    t = doc["thresholds"]
    assert 0 < t["embedding_cosine"] < 1 and doc["calibration"]["images"] == 32
    assert doc["calibration"]["pixel_confirmed"] >= 0.9  # of these photos' re-encoded and cropped copies
    assert doc["calibration"]["variants"]["centre crop 90 % (PNG)"]["pixel_confirmed"] == 1.0
    assert doc["store"]["fingerprint"] and doc["store"]["recipe"]["backbone"] == "efficientnet_lite0"
    assert doc["store"]["folder"] == "planted" and str(root) not in json.dumps(doc)  # no machine paths
    assert "3 test images have a training twin" in stdout


def test_a_clean_folder_gets_nothing_flagged(audited):
    root, study, stdout = audited["clean"]
    doc, rows = _flagged(study)
    assert rows == [] and doc["duplicates"]["groups"] == [] and doc["outliers"]["items"] == []
    assert doc["label_issues"]["train"] == [] and doc["label_issues"]["test"] == []


def test_report_shows_the_audit_and_the_accuracy_without_the_leaks(audited, tmp_path, monkeypatch):
    """A study's records with saved predictions get their accuracy on the test images without a training
    twin: computed from the predictions, checked here by hand."""
    from click.testing import CliRunner

    root, study, _ = audited["planted"]
    _calibrated_as_before(monkeypatch, study)
    work = tmp_path / "copy"
    shutil.copytree(root, work, symlinks=True)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        runner = CliRunner()
        r = run_cli(runner, "classify", "--dataset", "folder", "--data-dir", root / "planted", "--features",
                    "raw,efficientnet_lite0", "--classifiers", "lda,knn", "--grid", "quick", "--raw-size", 16,
                    "--n-jobs", 1)
        assert r.exit_code == 0, r.output
        out = work / "reports" / dataset_slug("folder", root / "planted")
        r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", root / "planted", "--features",
                    "efficientnet_lite0", "--device", "cpu")
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "audit.json").read_text())
        leaked = {m[1] for g in doc["duplicates"]["groups"] for m in g["members"] if m[0] == "test"}
        y = np.load(_planted_store(root) / "y_test.npy")
        keep = np.array([i not in leaked for i in range(len(y))])
        for a in doc["accuracy"]:
            pred = np.load(out / "predictions" / f"{a['feature_set']}_{a['classifier']}.npy")
            assert a["without_train_twins"] == pytest.approx(float((pred == y)[keep].mean()), abs=1e-4)
            assert a["removed_twins"] == 3 and a["all"] == pytest.approx(a["test_accuracy"], abs=1e-4)
        r = run_cli(runner, "report", "--out", out)
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(cwd)
    md = (out / "report.md").read_text()
    assert "## Trust the test set" in md and "without the 3 with a training twin" in md
    page = (out / "report.html").read_text()
    # issue 42 row 22: the accuracy without the leaks is shown once (in Accuracy, not again in the audit), and
    # commands in captions are code, not text with backticks
    assert page.count("without the 3 with a training twin") == 1 and md.count("without the 3 with a training twin") == 1
    assert "<code>pipeline evaluate --folder DIR</code>" in page
    assert not re.search(r"<p>[^<]*`", page), re.search(r"<p>[^<]*`", page)
    assert page.count('class="thumb') >= 2 + 2 + 2 + 1 + 1  # the three pairs, the moved image, the blank one
    assert "circle → triangle" in page


def test_rerun_is_up_to_date_and_other_data_is_refused(audited, tmp_path):
    from click.testing import CliRunner

    root, study, _ = audited["planted"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        runner = CliRunner()
        before = (study / "audit.json").read_bytes()
        r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", "planted", "--features",
                    "efficientnet_lite0")
        assert r.exit_code == 0 and "up to date" in r.stderr
        assert (study / "audit.json").read_bytes() == before
        # the clean folder's store audited into the planted study's folder: other data, refused in one line
        clean_store = audited["clean"][0] / "features" / dataset_slug("folder", audited["clean"][0] / "clean")
        clean_store = clean_store / "efficientnet_lite0"
        r = run_cli(runner, "audit", "--dataset", "folder", "--features", clean_store, "--out", study)
        assert_one_line_error(r, "holds the audit of other data", "--overwrite")
        assert (study / "audit.json").read_bytes() == before
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "audit.json").write_text('{"format": "something else"}')
        r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", "planted", "--features",
                    "efficientnet_lite0", "--out", tmp_path / "bad")
        assert_one_line_error(r, "is not pipeline's audit file")
        # issue 42 row 15: the right keys with wrong types were "up to date", then a TypeError
        doc = json.loads(before)
        doc["duplicates"]["counts"]["exact_groups"] = "none"
        doc["label_issues"]["test"] = [{"index": "7", "given": 0, "suggested": 1, "self_confidence": 0.5, "path": ""}]
        shutil.copytree(study, tmp_path / "typed")  # the study, its audit damaged
        (tmp_path / "typed" / "audit.json").write_text(json.dumps(doc))
        r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", "planted", "--features",
                    "efficientnet_lite0", "--out", tmp_path / "typed")
        assert_one_line_error(r, "audit.json: ", "must be", "move it away")
        r = run_cli(runner, "audit", "--dataset", "folder", "--data-dir", "planted", "--features", "raw")
        assert_one_line_error(r, "raw: the audit needs an embedding store", "not raw pixels",
                              "pass --features BACKBONE or a store path")
    finally:
        os.chdir(cwd)


def test_resumes_from_its_cached_search(audited, tmp_path, monkeypatch):
    """A crash after the neighbour search: the next audit reads it back instead of searching again."""
    from pipeline.audit import check
    from pipeline.store.featuresets import load_feature_set

    root, study, _ = audited["planted"]
    _calibrated_as_before(monkeypatch, study)
    out = tmp_path / "study"
    shutil.copytree(study, out)
    (out / "audit.json").unlink()
    monkeypatch.setattr(check, "nearest", lambda *a, **k: pytest.fail("searched again"))
    fs = load_feature_set(str(_planted_store(root)), "folder")
    doc = check.audit(fs, out, device="cpu", log=lambda m: None)
    assert doc["duplicates"]["counts"]["test_with_train_twin"] == 3


def test_missing_cleanlab_is_one_line(audited, monkeypatch):
    import builtins

    from click.testing import CliRunner

    real = builtins.__import__

    def no_cleanlab(name, *a, **k):
        if name.startswith("cleanlab"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cleanlab)
    root, study, _ = audited["planted"]
    r = run_cli(CliRunner(), "audit", "--dataset", "folder", "--features",
                _planted_store(root), "--out", root / "elsewhere")
    assert_one_line_error(r, "cleanlab", "pip install 'transfer-workbench[audit]'")
    assert not (root / "elsewhere" / "audit.json").exists()


def test_pixel_check_and_groups():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 40, 40), dtype=np.uint8)
    _, a = dup.signature(img)
    _, same = dup.signature(img.copy())
    _, crop = dup.signature(np.ascontiguousarray(img[:, 2:38, 2:38]))
    _, other = dup.signature(rng.integers(0, 255, (3, 40, 40), dtype=np.uint8))
    _, blank = dup.signature(np.full((1, 30, 30), 128, np.uint8))
    _, blank2 = dup.signature(np.full((1, 50, 50), 129, np.uint8))
    corr, mad = dup.pixel_match(np.stack([a, a, a, blank]), np.stack([same, crop, other, blank2]))
    assert dup.confirmed(corr, mad).tolist() == [True, True, False, True]
    assert dup.groups(6, [(0, 1), (1, 2), (4, 5)]) == [[0, 1, 2], [4, 5]]
    assert dup.exact_pairs(["a", "b", "a", "a"]) == [(0, 2), (0, 3)]


@pytest.mark.parametrize("extra, says", [
    (["--n-jobs", 0], "--n-jobs 0: give a positive number of parallel jobs, or -1 for all cores"),
    (["--n-jobs", -2], "--n-jobs -2"),
])
def test_bad_audit_options_are_one_line_before_any_work(tmp_path, runner, extra, says):
    """Issue 42 row 15: `audit --n-jobs 0` was a traceback from scikit-learn, after the work before it."""
    r = run_cli(runner, "audit", "--features", tmp_path / "no-store", "--out", tmp_path / "o", *extra)
    assert_one_line_error(r, says)
    assert not (tmp_path / "o").exists()


def test_a_cache_of_the_wrong_shape_is_searched_again_not_indexed(audited, tmp_path, monkeypatch):
    """Issue 42 row 15: a cached array of the wrong shape (audit/*.npy) was an IndexError where the docs
    promise a recompute."""
    import numpy as np

    from pipeline.audit import check
    from pipeline.store.featuresets import load_feature_set

    root, study, _ = audited["planted"]
    _calibrated_as_before(monkeypatch, study)
    out = tmp_path / "study"
    shutil.copytree(study, out)
    (out / "audit.json").unlink()
    np.save(out / "audit" / "all_train_idx.npy", np.zeros((3, 6), np.int64))  # cut to 3 rows
    np.save(out / "audit" / "probs_test.npy", np.zeros((2, 2)))
    searched = []
    real = check.nearest
    monkeypatch.setattr(check, "nearest", lambda *a, **k: searched.append(1) or real(*a, **k))
    fs = load_feature_set(str(_planted_store(root)), "folder")
    doc = check.audit(fs, out, device="cpu", log=lambda m: None)
    assert searched and doc["duplicates"]["counts"]["test_with_train_twin"] == 3
