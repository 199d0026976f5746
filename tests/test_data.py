"""Readers: what they return, and the one-line refusal of every kind of bad input."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from helpers import EXTRACT, N_TEST, N_TRAIN, assert_one_line_error, make_idx_dir, run_cli

from pipeline.data import FASHION_MNIST_CLASSES, load_dataset, read_idx, write_idx
from pipeline.errors import PipelineError


def test_fashion_mnist_idx_gz_and_plain(tmp_path, idx_dir):
    ds = load_dataset("fashion-mnist", idx_dir)
    plain = load_dataset("fashion-mnist", make_idx_dir(tmp_path / "plain", gz=False))
    assert ds.classes == FASHION_MNIST_CLASSES
    assert {k: len(s) for k, s in ds.splits.items()} == {"train": N_TRAIN, "test": N_TEST}
    x = ds.splits["train"].batch(0, 5)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, plain.splits["train"].batch(0, 5))
    assert ds.content_hash == plain.content_hash  # the hash is of the content, not the compression


def test_torchvision_layout_and_limit(tmp_path):
    make_idx_dir(tmp_path / "root" / "FashionMNIST" / "raw")
    ds = load_dataset("fashion-mnist", tmp_path / "root", limit=10)
    assert len(ds.splits["train"]) == 10 and len(ds.splits["test"]) == 10
    full = load_dataset("fashion-mnist", tmp_path / "root")
    assert ds.content_hash != full.content_hash
    np.testing.assert_array_equal(ds.splits["test"].labels, full.splits["test"].labels[:10])


def test_data_dir_from_environment(monkeypatch, idx_dir):
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(idx_dir))
    assert len(load_dataset("fashion-mnist").splits["train"]) == N_TRAIN


def test_offline_without_data_says_the_options(monkeypatch, tmp_path, runner):
    import torchvision.datasets

    monkeypatch.delenv("PIPELINE_DATA_DIR", raising=False)
    monkeypatch.setattr("pipeline.data.idx.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    r = run_cli(runner, "extract", "--weights", "none", "--out", tmp_path / "out")
    assert_one_line_error(r, "--data-dir", "PIPELINE_DATA_DIR", "dataset-fashion-mnist", "download failed")
    assert not (tmp_path / "out").exists()


def test_cifar10_batches(cifar_dir):
    ds = load_dataset("cifar10", cifar_dir)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert len(ds.splits["train"]) == 30 and len(ds.splits["test"]) == 8
    assert ds.splits["train"].batch(0, 2).shape == (2, 3, 32, 32)


def test_cifar_refuses_pickled_code(cifar_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(PipelineError, match="test_batch.*forbidden"):
        load_dataset("cifar10", cifar_dir)


def test_folder_round_robin_varied_sizes(folder_dir):
    ds = load_dataset("folder", folder_dir, limit=6)
    assert ds.classes == ["boot", "shirt", "trouser"]
    assert list(ds.splits["train"].labels) == [0, 1, 2, 0, 1, 2]  # --limit keeps every class
    imgs = ds.splits["test"].batch(0, 4)
    assert {im.shape[0] for im in imgs} == {1, 3}  # grayscale stays 1 channel, colour 3
    assert len({im.shape[1:] for im in imgs}) > 1


def test_folder_without_splits_is_a_test_set(folder_dir):
    ds = load_dataset("folder", folder_dir / "test")
    assert list(ds.splits) == ["test"] and len(ds.splits["test"]) == 9


# --- bad input: one line naming the file, exit 1, no traceback, nothing written ------------------------

def _corrupt(idx_dir, how):
    f = idx_dir / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    if how == "truncated":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
        return f, "truncated"
    if how == "not-gzip":
        f.write_bytes(raw)
        return f, "not a gzip file"
    if how == "magic":
        f.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
        return f, "bad magic"
    if how == "type":
        f.write_bytes(gzip.compress(raw[:2] + b"\x0d" + raw[3:]))
        return f, "element type 0x0d"
    if how == "absurd":
        f.write_bytes(gzip.compress(raw[:4] + struct.pack(">III", 4_000_000_000, 28, 28) + raw[16:]))
        return f, "absurd"
    if how == "short-payload":
        f.write_bytes(gzip.compress(raw[:-100]))
        return f, "truncated or corrupt"
    if how == "count":
        n = struct.unpack(">I", raw[4:8])[0]
        f.write_bytes(gzip.compress(raw[:4] + struct.pack(">I", n - 1) + raw[8:-784]))
        return f, "labels"
    if how == "label-range":
        lab = idx_dir / "train-labels-idx1-ubyte.gz"
        y = read_idx(lab, 1).copy()
        y[3] = 10
        write_idx(lab, y)
        return lab, "label 10 at row 3 is out of range"
    if how == "missing":
        (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
        return idx_dir / "t10k-labels-idx1-ubyte", "missing file"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "not-gzip", "magic", "type", "absurd", "short-payload", "count",
                                 "label-range", "missing"])
def test_bad_idx_files(idx_dir, tmp_path, runner, how):
    bad_file, problem = _corrupt(idx_dir, how)
    out = tmp_path / "store"
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--weights", "none", "--out", out)
    assert_one_line_error(r, str(bad_file), problem)
    assert not out.exists() and not (tmp_path / "store.partial").exists()


def test_absurd_header_fails_before_allocating(tmp_path, monkeypatch):
    f = tmp_path / "x-idx3-ubyte"
    f.write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 60000, 28000, 28000))
    monkeypatch.setattr("builtins.bytearray", lambda *a: pytest.fail("allocated for a corrupt header"))
    with pytest.raises(PipelineError, match="absurd"):
        read_idx(f, 3)


def test_missing_data_dir_is_not_created(tmp_path, runner):
    d = tmp_path / "nowhere"
    r = run_cli(runner, "extract", "--data-dir", d, "--weights", "none", "--out", tmp_path / "o")
    assert_one_line_error(r, str(d), "does not exist")
    assert not d.exists()


def test_unreadable_image_in_folder(folder_dir, tmp_path, runner):
    bad = folder_dir / "test" / "shirt" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out = tmp_path / "store"
    r = run_cli(runner, "extract", "--dataset", "folder", "--data-dir", folder_dir, "--weights", "none",
                "--out", out)
    assert_one_line_error(r, str(bad), "unreadable image")
    assert not out.exists()


def test_bad_cifar_batch(cifar_dir, tmp_path, runner):
    bad = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:50])
    r = run_cli(runner, "extract", "--dataset", "cifar10", "--data-dir", cifar_dir, "--weights", "none",
                "--out", tmp_path / "o")
    assert_one_line_error(r, str(bad), "not a readable CIFAR-10 python batch")


# --- CIFAR batches of other shapes --------------------------------------------------------------------------

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


def test_cifar_labels_as_numpy_integers_load(cifar_dir):
    from pipeline.data import load_dataset

    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "rb") as f:
        d = pickle.load(f)
    d[b"labels"] = list(np.asarray(d[b"labels"], dtype=np.int64))  # numpy scalars, as list(array) gives
    with open(batch, "wb") as f:
        pickle.dump(d, f)
    assert len(load_dataset("cifar10", cifar_dir).splits["train"]) == 30



def test_the_fashion_photos_example_without_data_is_one_line(tmp_path):
    """Issue 42 row 25: `examples/fashion_photos.py` without Fashion-MNIST printed a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "fashion_photos.py"
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--data-dir", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()
