"""Hostile files, full disks, concurrent writers: one clear line or correct behaviour, and nothing that the
user or an earlier stage made is lost. One test (or more) per case found by trying to break the tool."""
from __future__ import annotations

import errno
import json
import pickle
import subprocess
import sys
import threading
import time

import cli_process
import numpy as np
import pytest
from helpers import FAST_ARGS, assert_one_line_error, blobs, extract, make_idx_dir, run_cli, write_store

from pipeline import load_features
from pipeline.errors import PipelineError
from pipeline.files import atomic_write

EXTRACT = ["extract", *FAST_ARGS]  # the CPU path, GPU or not


@pytest.fixture
def data(tmp_path):
    return make_idx_dir(tmp_path / "data", n_train=40, n_test=16)


@pytest.fixture
def reference(data, tmp_path):
    return load_features(extract("fashion-mnist", "resnet18", data_dir=data, out=tmp_path / "ref", batch_size=8).path)


def same_features(a, b):
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_test, b.X_test)


# --- the user's own folders beside the store ----------------------------------------------------------

def test_users_partial_folder_is_refused_never_deleted(data, tmp_path, runner):
    out = tmp_path / "store"
    mine = tmp_path / "store.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "store.partial exists and was not made by pipeline", "choose another --out")
    assert (mine / "notes.txt").read_text() == "mine" and not out.exists()


def test_users_old_folder_survives_overwrite_and_plain_extract(data, tmp_path, runner, reference):
    out = tmp_path / "store"
    mine = tmp_path / "store.old"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    out.mkdir()  # an empty folder to extract into (a plain extract replaces it)
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    r = run_cli(runner, *EXTRACT[:-4], "--image-size", 32, "--data-dir", data, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert load_features(out).meta["image_size"] == 32
    assert (mine / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".store")) == [".store.lock"]


# --- a full disk ---------------------------------------------------------------------------------------

def test_short_writes_are_completed_not_committed_half(data, tmp_path, monkeypatch, reference):
    import os

    real = os.pwrite

    def short(fd, buf, offset):  # the kernel may write less than asked: a full disk, a signal
        return real(fd, bytes(buf)[: max(1, len(buf) // 3)], offset)

    monkeypatch.setattr(os, "pwrite", short)
    res = extract("fashion-mnist", "resnet18", data_dir=data, out=tmp_path / "s", batch_size=8)
    same_features(load_features(res.path), reference)


def test_disk_full_is_one_line_and_leaves_a_resumable_store(data, tmp_path, monkeypatch, runner, reference):
    import os

    real, calls = os.pwrite, []

    def full_after_two(fd, buf, offset):
        calls.append(len(buf))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buf, offset)

    out = tmp_path / "s"
    monkeypatch.setattr(os, "pwrite", full_after_two)
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "No space left on device (disk full)", "run the same command again to resume")
    assert not out.exists()
    done = json.loads((tmp_path / "s.partial" / "progress.json").read_text())["done"]
    assert done["train"] == 16  # the two batches that reached the disk, and not one row more
    monkeypatch.setattr(os, "pwrite", real)
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert r.exit_code == 0 and "resuming at 16/56" in r.stderr
    same_features(load_features(out), reference)


# --- damaged store files -------------------------------------------------------------------------------

def test_damaged_progress_starts_over_and_damaged_meta_is_one_line(data, tmp_path, runner, reference):
    out = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    (out / "meta.json").write_text("{not json")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out)
    assert_one_line_error(r, "s/meta.json is damaged", "--overwrite")
    r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    same_features(load_features(out), reference)

    other = tmp_path / "t"  # an unfinished store whose progress.json is garbage, or JSON of another shape
    for bad in ("\x00\x01garbage", "[1, 2]", '{"config_hash": 5, "done": "all"}'):
        with pytest.raises(SystemExit):  # kill it mid-way: a partial store of ours
            _partial(data, other)
        (tmp_path / "t.partial" / "progress.json").write_text(bad)
        r = run_cli(runner, *EXTRACT, "--data-dir", data, "--out", other)
        assert r.exit_code == 0, r.output
        assert "progress.json was damaged; starting this extraction over" in r.stderr
        same_features(load_features(other), reference)
        import shutil

        shutil.rmtree(other)


def _partial(data, out):
    """Leave an unfinished store of ours at out.partial (as a crash would)."""
    from pipeline.embed import engines

    real = engines.TorchEngine.map

    def crash_after_one(self, batches):
        for i, f in enumerate(real(self, batches)):
            if i == 1:
                raise SystemExit(1)
            yield f

    engines.TorchEngine.map = crash_after_one
    try:
        extract("fashion-mnist", "resnet18", data_dir=data, out=out, batch_size=8)
    finally:
        engines.TorchEngine.map = real


def test_load_features_on_damaged_meta(tmp_path):
    s = write_store(tmp_path / "s", *blobs(20), *blobs(10, seed=1))
    for bad in ("[]", '{"rows": 3}', "{"):
        (s / "meta.json").write_text(bad)
        with pytest.raises(PipelineError, match="damaged feature store"):
            load_features(s)


# --- results files -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "features" / "toynet", *blobs(120), *blobs(40, seed=1))


@pytest.mark.parametrize("content", ["[{\"feature_set\": \"raw\",", '{"records": []}', '[{"feature_set": 3}]'])
def test_damaged_or_foreign_results_file_stops_before_any_fit(tmp_path, runner, store, content):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text(content)
    t = time.perf_counter()
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "rf,svc,knn", "--out", out)
    assert_one_line_error(r, "results.json", "move it away or choose another --out")
    assert time.perf_counter() - t < 10  # refused up front, not after the fits
    assert (out / "results.json").read_text() == content and not (out / "confusion").exists()
    assert_one_line_error(run_cli(runner, "report", "--out", out), "results.json")


def test_a_second_writer_of_one_out_is_refused(tmp_path, runner, store):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(out / '.pipeline.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write('pipeline classify (pid 4242)'); f.flush(); print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--grid", "quick", "--out", out)
        assert_one_line_error(r, "is being written by pipeline classify (pid 4242)", "wait for it")
        assert_one_line_error(run_cli(runner, "report", "--out", out), "is being written by")
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--grid", "quick", "--out", out)
    assert r.exit_code == 0, r.output


def test_atomic_write_from_concurrent_writers_never_tears(tmp_path):
    path = tmp_path / "results.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(4)]
    errors = []

    def write(text):
        try:
            for _ in range(30):
                atomic_write(path, text)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


# --- CIFAR batches -------------------------------------------------------------------------------------

def test_cifar_batch_pickled_with_protocol_5_loads(cifar_dir):
    from pipeline.data import load_dataset

    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        d = pickle.load(f)
    with open(batch, "wb") as f:
        pickle.dump(d, f, protocol=5)
    ds = load_dataset("cifar10", cifar_dir)
    np.testing.assert_array_equal(ds.splits["train"].images[:6].reshape(6, -1), d[b"data"])


def test_cifar_labels_as_shared_nested_lists_are_refused_without_materialising(cifar_dir, runner):
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "rb") as f:
        d = pickle.load(f)
    row = [0] * 2000
    d[b"labels"] = [[row] * 2000] * 6  # a few KB on disk, 2000**2 * 6 * 8 bytes = 192 MB as an array
    with open(batch, "wb") as f:
        pickle.dump(d, f)
    assert batch.stat().st_size < 50_000
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run_cli(runner, *EXTRACT, "--dataset", "cifar10", "--data-dir", cifar_dir, "--out", cifar_dir / "s")
    assert_one_line_error(r, "data_batch_2: 'labels' must be a flat list of integers, not a list holding list")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: nothing materialised


# --- weights -------------------------------------------------------------------------------------------

def test_fine_tuned_checkpoint_with_another_head_extracts(data, tmp_path, reference):
    import torch
    import torchvision

    torch.manual_seed(0)  # the same trunk as --weights none (seed 0), with a 10-class head
    trunk = torchvision.models.resnet18().state_dict()
    head = torchvision.models.resnet18(num_classes=10).state_dict()
    sd = {**trunk, "fc.weight": head["fc.weight"], "fc.bias": head["fc.bias"]}
    path = tmp_path / "finetuned-10-classes.pth"
    torch.save(sd, path)
    res = extract("fashion-mnist", "resnet18", data_dir=data, out=tmp_path / "s", batch_size=8,
                  weights=str(path))
    f = load_features(res.path)
    assert "fc.weight" in f.meta["backbone"]["weights"]["unused_head"]
    assert f.X_train.shape == reference.X_train.shape


# --- OpenVINO --------------------------------------------------------------------------------------------

class _Stuck:
    """An infer request that never finishes (as the one seen hanging in CI)."""

    def infer(self, inputs, share_inputs=True):
        threading.Event().wait(60)


def test_openvino_waits_are_bounded(data, tmp_path, monkeypatch, runner):
    pytest.importorskip("openvino")
    from pipeline.embed import engines

    monkeypatch.setattr(engines, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(engines.OpenVINOEngine, "_new_request", lambda self, compiled: _Stuck())
    r = run_cli(runner, *EXTRACT[:-4], "--precision", "bf16", "--engine", "openvino", "--data-dir", data,
                "--out", tmp_path / "s")
    assert_one_line_error(r, "OpenVINO engine did not finish a request", "--engine torch")


def test_openvino_engines_built_one_after_another_do_not_deadlock(tmp_path):
    """Engines freed while the next one runs (as `pipeline evaluate` does per feature set and variant): with
    AsyncInferQueue callbacks this deadlocked on the GIL; each run here finishes, in a child process with a
    bound so a regression fails instead of hanging the suite."""
    pytest.importorskip("openvino")
    code = ("import gc, numpy as np\nfrom pipeline.embed.backbones import build_backbone\n"
            "from pipeline.embed.engines import make_engine\n"
            "x = np.random.default_rng(0).integers(0, 255, (64, 3, 40, 40), dtype=np.uint8)\n"
            "for i in range(12):\n"
            "    eng = make_engine(build_backbone('resnet18', 'none', image_size=32), 'cpu', 'fp32', 'openvino')\n"
            "    out = np.concatenate(list(eng.map(iter([x[:40], x[40:]]))))\n"
            "    assert out.shape == (64, 512), out.shape\n"
            "    del eng; gc.collect()\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --- Markdown ----------------------------------------------------------------------------------------------

def test_data_strings_are_escaped_in_markdown(tmp_path):
    from pipeline.classical.search import classify
    from pipeline.report import write_report
    from pipeline.store.featuresets import FeatureSet

    classes = ["$5_$", "a|b", "*bold*", "<b>x</b>", "[link](http://x)", "_u_", "ok", "T-shirt/top", "8", "9"]
    X, y = blobs(100)
    Xt, yt = blobs(40, seed=1)
    fs = FeatureSet("toy|net*", X, y, Xt, yt, classes, "fashion-mnist", {"config_hash": "x"})
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


def test_store_of_a_test_only_folder_loads(folder_dir, tmp_path):
    from helpers import extract

    from pipeline.data import load_dataset

    ds = load_dataset("folder", folder_dir / "test")  # class folders, no split asked for: a test set only
    extract(ds, "resnet18", weights="none", image_size=48, precision="fp32", batch_size=8, out=tmp_path / "s",
            progress=False)
    f = load_features(tmp_path / "s")
    assert f.X_train.shape == (0, 512) and f.y_train.shape == (0,) and f.X_test.shape == (9, 512)


def test_class_names_that_look_like_mathtext_draw(tmp_path):
    from pipeline.render.figures import confusion_figure

    path = confusion_figure(np.eye(3, dtype=int) * 5, ["$5_$", "a^b", r"\frac"], "t", tmp_path / "cm.png")
    assert path.stat().st_size > 5000


# --- found in review -----------------------------------------------------------------------------------------

def _cli(args, env=None):
    import os

    return cli_process.run(args, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("point", ["extract:finalize", "extract:replace"])
def test_killed_while_moving_the_store_into_place(data, tmp_path, reference, point):
    """Killed after the finished store's meta.json is written (and, with --overwrite, after the old store
    was moved aside): the same command finishes the move; nothing is extracted again, nothing is lost."""
    out = tmp_path / "s"
    args = [*EXTRACT, "--data-dir", data, "--out", out]
    if point == "extract:replace":
        assert _cli([*EXTRACT[:-4], "--image-size", 32, "--data-dir", data, "--out", out]).returncode == 0
        args.append("--overwrite")
    r = _cli(args, {"PIPELINE_KILL_AT": point})
    assert r.returncode == -9, r.stderr[-1500:]
    r = _cli(args)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "finished the move into place" in r.stderr
    same_features(load_features(out), reference)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".s", "s"))) == [".s.lock", "s"]
    assert sorted(p.name for p in out.iterdir()) == ["X_test.npy", "X_train.npy", "meta.json", "y_test.npy",
                                                     "y_train.npy"]


def test_users_hidden_tmp_files_in_out_are_not_swept(tmp_path, runner, store):
    out = tmp_path / "o"
    out.mkdir()
    mine = [out / ".notes.20240101.tmp", out / ".cache.download.tmp"]
    for p in mine:
        p.write_text("mine")
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--grid", "quick", "--out", out)
    assert r.exit_code == 0, r.output
    assert all(p.read_text() == "mine" for p in mine)


def test_cifar_labels_as_numpy_integers_load(cifar_dir):
    from pipeline.data import load_dataset

    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "rb") as f:
        d = pickle.load(f)
    d[b"labels"] = list(np.asarray(d[b"labels"], dtype=np.int64))  # numpy scalars, as list(array) gives
    with open(batch, "wb") as f:
        pickle.dump(d, f)
    assert len(load_dataset("cifar10", cifar_dir).splits["train"]) == 30


def test_headless_checkpoint_extracts(data, tmp_path, reference):
    import torch
    import torchvision

    torch.manual_seed(0)
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "trunk-only.pth"
    torch.save(sd, path)
    res = extract("fashion-mnist", "resnet18", data_dir=data, out=tmp_path / "s", batch_size=8,
                  weights=str(path))
    f = load_features(res.path)
    same_features(f, reference)  # the same trunk as --weights none (seed 0)
    assert "not loaded" in f.meta["backbone"]["weights"]["unused_head"]


def test_openvino_usage_telemetry_is_declined():
    """OpenVINO's import and model conversion would send usage events (from a forked process); pipeline's
    engine declines them, and leaves the environment as it was."""
    pytest.importorskip("openvino")
    code = ("import os, torch\nfrom pipeline.embed.backbones import build_backbone\n"
            "from pipeline.embed.engines import make_engine\n"
            "make_engine(build_backbone('resnet18', 'none', image_size=32), 'cpu', 'fp32', 'openvino')\n"
            "import openvino_telemetry as tm\nprint(tm.Telemetry().consent, os.environ.get('CI'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "CI"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "None"]
