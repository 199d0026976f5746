"""Saved models' cards and run.json read back: each validated against its one schema (types, bounds,
required fields) and against the model it describes, before anything is allocated from it. An edited or
hostile file is one line naming the field, never a traceback or a 23 GB allocation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, make_idx_dir, run_cli
from PIL import Image

from pipeline.results import read_results


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A raw-pixel LDA (.skops) and a linear head (.safetensors) on tiny Fashion-MNIST IDX files, and a photo."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("saved")
    data = make_idx_dir(root / "data", n_train=60, n_test=20)
    out = root / "rep"
    runner = CliRunner()
    common = ["--data-dir", data, "--out", out]
    r = run_cli(runner, "classify", "--features", "raw", "--classifiers", "lda", "--grid", "quick", "--cv", 2, *common)
    assert r.exit_code == 0, r.output
    r = run_cli(runner, "train", "--features", "raw", "--head", "linear", "--epochs", 1, "--val-fraction", 0.3,
                "--device", "cpu", *common)
    assert r.exit_code == 0, r.output
    img = root / "photo.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    return out, img


def _edited(saved, tmp_path, stem, change):
    """A copy of a saved model whose card `change` edits."""
    import shutil

    out, _ = saved
    models = tmp_path / "models"
    shutil.copytree(out / "models", models)
    card = json.loads((models / f"{stem}.json").read_text())
    change(card)
    (models / f"{stem}.json").write_text(json.dumps(card))
    return models / f"{stem}.skops" if (models / f"{stem}.skops").exists() else models / f"{stem}.safetensors"


def _set(path, value):
    def change(card):
        *parents, last = path.split(".")
        d = card
        for k in parents:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return change


@pytest.mark.parametrize("stem, field, value, says", [
    ("raw_lda", "features.size", 200000, "features.size must be at most 1024 (is 200000)"),
    ("raw_lda", "features.size", "abc", 'features.size must be integer or null (is "abc")'),
    ("raw_lda", "features.channels", 7, "features.channels must be one of 1, 3 (is 7)"),
    ("raw_lda", "features.kind", KeyError, "features.kind is missing"),
    ("raw_lda", "classes", "T-shirt/top", "classes must be array (is \"T-shirt/top\")"),
    ("raw_lda", "classes", [], "classes must hold at least 1 item(s) (holds 0)"),
    ("raw_lda", "format", "other/1", 'format must be "pipeline-model/1"'),
    ("raw_lda", "features.size", 32, "its features make 1,024 values per image, but the model takes 784"),
    ("raw_lda", "classes", ["a", "b", "c"], "classes names 3 classes, but the model predicts labels up to"),
    ("raw_linear", "architecture.in_dim", 1 << 20, "does not describe this model"),
    ("raw_linear", "architecture.head", {"kind": "mlp", "hidden": [1 << 20] * 16, "transform": "none"},
     "does not describe this model"),  # 16 layers of 2^40 weights each: built on torch's meta device only
    ("raw_linear", "architecture.head.kind", "transformer", "architecture.head.kind must be one of"),
    ("raw_linear", "classes", ["a", "b"], "does not describe this model"),
])
def test_an_edited_card_is_one_line_naming_the_field(saved, tmp_path, runner, stem, field, value, says):
    model = _edited(saved, tmp_path, stem, _set(field, value))
    r = run_cli(runner, "predict", "--model", model, saved[1], "--out", tmp_path / "p.csv")
    assert_one_line_error(r, model.with_suffix(".json").name, says)
    assert not (tmp_path / "p.csv").exists()


def test_a_card_cannot_make_predict_allocate(saved, tmp_path, runner):
    """features.size 200000 asked predict for 200000² pixels per image; now it is refused before any image is
    decoded, in a process whose address space could not hold even one such image."""
    import resource
    import subprocess
    import sys

    model = _edited(saved, tmp_path, "raw_lda", _set("features.size", 200000))
    ours = resource.getrlimit(resource.RLIMIT_AS)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
            "from pipeline.cli import main; sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(model), str(saved[1]), "--out",
                        str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "features.size must be at most 1024" in r.stderr, r.stderr[-800:]
    # the limit applied to the child only: this process's is what it was, not the child's 6 GiB
    assert resource.getrlimit(resource.RLIMIT_AS) == ours != (6 << 30, 6 << 30)


@pytest.mark.parametrize("run_json, says", [
    ({"stages": [{"stage": "extract", "state": "ran", "seconds": "fast"}]}, "stages.0.seconds must be number"),
    ({"stages": {"extract": 1}}, "stages must be array"),
    ({"command": 5}, "command must be string or null (is 5)"),
    ({"previous_runs": [{"stages": [{"stage": "x"}]}]}, "previous_runs.0.stages.0.state is missing"),
    ([1, 2], "the file must be object"),
])
def test_run_json_of_the_wrong_types_is_one_line_in_report(saved, tmp_path, runner, run_json, says):
    import shutil

    out = tmp_path / "rep"
    shutil.copytree(saved[0], out)
    (out / "run.json").write_text(json.dumps(run_json))
    r = run_cli(runner, "report", "--out", out)
    assert_one_line_error(r, "run.json: ", says, "move it away")
    assert not (out / "report.html").exists()


@pytest.mark.slow
def test_what_pipeline_writes_passes_its_own_schemas(saved, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's store goes to ./features/
    from pipeline.files import check_schema
    from pipeline.models.saved import CARD_SCHEMA
    from pipeline.report import RUN_SCHEMA

    out, img = saved
    for card in (out / "models").glob("*.json"):
        check_schema(json.loads(card.read_text()), CARD_SCHEMA, card, "")
    data = make_idx_dir(tmp_path / "d", n_train=40, n_test=20)
    r = run_cli(runner, "run", "--data-dir", data, "--weights", "none", "--image-size", 32, "--grid", "quick",
                "--classifiers", "lda", "--methods", "pca", "--cv", 2, "--device", "cpu", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    check_schema(info, RUN_SCHEMA, "run.json", "")
    # what ran, read back from what each stage wrote (not the backend chosen)
    meta = json.loads(next((tmp_path / "features").rglob("meta.json")).read_text())
    assert info["ran"]["extract"] == {"engine": meta["engine"]["engine"], "precision": meta["precision"],
                                      "device": "cpu", "device_name": meta["device"]["name"]}
    records = read_results(tmp_path / "o")
    assert info["ran"]["classify"] == {f"{r['feature_set']} lda": f"{r['backend']} on {r['device']}" for r in records}
    assert len(records) == 2 and set(info["ran"]["maps"].values()) == {"PCAMap"} and len(info["ran"]["maps"]) == 2


def _special_files(tmp_path) -> dict:
    """Paths a command must never replace: a FIFO, a link to a file, a folder, and (as root) a device node."""
    import os
    import stat

    paths = {"fifo": tmp_path / "fifo", "link": tmp_path / "link.csv", "folder": tmp_path / "folder"}
    os.mkfifo(paths["fifo"])
    (tmp_path / "target.txt").write_text("someone's file")
    paths["link"].symlink_to(tmp_path / "target.txt")
    paths["folder"].mkdir()
    if os.geteuid() == 0:  # as root, `mknod mynull c 1 3` is a second /dev/null
        paths["device"] = tmp_path / "mynull"
        os.mknod(paths["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return paths


def test_predict_never_replaces_what_it_did_not_write(saved, tmp_path, runner):
    """An existing file is replaced only with --overwrite; a device, FIFO, link or folder never."""
    out, img = saved
    model = out / "models" / "raw_lda.skops"
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    r = run_cli(runner, "predict", "--model", model, img, "--out", notes)
    assert_one_line_error(r, f"{notes} exists", "pass --overwrite")
    assert notes.read_text() == "my notes"
    for kind, path in _special_files(tmp_path).items():
        kind_before = path.lstat().st_mode
        r = run_cli(runner, "predict", "--model", model, img, "--out", path, "--overwrite")
        if kind == "folder":  # refused by the option's own check (a file, not a folder)
            assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output
        else:
            assert_one_line_error(r, "is not a regular file", "choose another --out")
        assert path.lstat().st_mode == kind_before, kind  # still a FIFO, a link, a folder, a device
    assert (tmp_path / "target.txt").read_text() == "someone's file"
    r = run_cli(runner, "predict", "--model", model, img, "--out", notes, "--overwrite")
    assert r.exit_code == 0, r.output
    assert notes.read_text().startswith("path,predicted,score_kind")


def test_no_write_replaces_a_device_or_fifo(tmp_path):
    """The last guard, under every command: atomic writes refuse a FIFO, a folder or a device at the path."""
    from pipeline.errors import PipelineError
    from pipeline.files import atomic_write

    for kind, path in _special_files(tmp_path).items():
        if kind == "link":  # a link is replaced (the link, not what it points to), as before
            continue
        with pytest.raises(PipelineError, match="is not a regular file"):
            atomic_write(path, "x")
        assert not path.is_file(), kind


def test_scores_are_named_for_what_they_are():
    """Issue 42 row 26: predict labelled an RBF SVC's scores only "decision". They are one-vs-one votes (each
    class's vote count plus a confidence under 1/3); a linear SVM's are one-vs-rest margins; neither is a
    probability, and a model with probabilities says so."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from pipeline.apply.predict import model_scores

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (30, 4)) for c in range(4)])
    y = np.repeat(np.arange(4), 30)
    svc = make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(X, y)
    kind, s = model_scores(svc, X)
    assert kind == "one-vs-one votes" and s.shape == (120, 4)
    votes = np.round(s)  # 4 classes: 6 pairwise votes per image
    assert np.all(np.abs(s - votes) < 1 / 3 + 1e-9) and np.all(votes.sum(1) == 6)
    assert np.array_equal(s.argmax(1), svc.predict(X))
    assert model_scores(make_pipeline(LinearSVC()).fit(X, y), X)[0] == "one-vs-rest margin"
    assert model_scores(make_pipeline(SVC()).fit(X[y < 2], y[y < 2]), X)[0] == "one-vs-rest margin"  # one score
    assert model_scores(LogisticRegression().fit(X, y), X)[0] == "probability"
