"""The embeddings meet the tools people already use: `pipeline export` to Parquet and CSV (read back by pandas
and DuckDB equal to `load_features`), and `ImageEmbedder`, Stage 1 as a scikit-learn transformer."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import EXTRACT, FAST, assert_one_line_error, run_cli, shapes_folder

from pipeline import load_features


@pytest.fixture
def store_with_maps(data, tmp_path, runner):
    """A small Fashion-MNIST store and a PCA map of it."""
    out = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--data-dir", data, "--out", out).exit_code == 0
    r = run_cli(runner, "project", "--features", out, "--data-dir", data, "--methods", "pca", "--out",
                tmp_path / "maps")
    assert r.exit_code == 0, r.output
    return out, tmp_path / "maps"


@pytest.mark.parametrize("to", ["parquet", "csv"])
def test_export_round_trips_through_pandas_and_duckdb(store_with_maps, tmp_path, runner, to):
    import duckdb
    import pandas as pd

    store, maps = store_with_maps
    r = run_cli(runner, "export", "--features", store, "--to", to, "--maps", maps)
    assert r.exit_code == 0, r.output
    path = store.with_name(f"s.{to}")
    f = load_features(store)
    X = np.concatenate([f.X_train, f.X_test])
    df = pd.read_parquet(path) if to == "parquet" else pd.read_csv(path)
    emb = np.stack(df["embedding"]) if to == "parquet" else df[[f"e{j}" for j in range(X.shape[1])]].to_numpy()
    np.testing.assert_array_equal(emb.astype(np.float32), X)  # bit-identical, CSV included
    assert list(df["split"]) == ["train"] * len(f.y_train) + ["test"] * len(f.y_test)
    np.testing.assert_array_equal(df["label"], np.concatenate([f.y_train, f.y_test]))
    assert list(df["index"]) == list(range(len(f.y_train))) + list(range(len(f.y_test)))
    assert set(df["label_name"]) <= set(f.meta["dataset"]["classes"]) and "source" in df
    xy = np.load(maps / "resnet18_pca.npy")
    np.testing.assert_allclose(df[["pca_x", "pca_y"]].to_numpy(), xy, rtol=1e-6)
    counts = duckdb.sql(f"select split, count(*) as n from '{path}' group by split order by split").fetchall()
    assert counts == [("test", len(f.y_test)), ("train", len(f.y_train))]

    r = run_cli(runner, "export", "--features", store, "--to", to)  # the file exists: refused, kept
    assert_one_line_error(r, f"s.{to} exists", "--overwrite")
    assert run_cli(runner, "export", "--features", store, "--to", to, "--overwrite").exit_code == 0


def test_export_of_a_folder_store_names_each_file(tmp_path, runner, monkeypatch):
    """Extracted with a relative --data-dir, exported from another folder: the files are found and named."""
    import pandas as pd

    from pipeline.data import load_dataset

    data = shapes_folder(tmp_path / "shapes", 5)
    store = tmp_path / "s"
    monkeypatch.chdir(tmp_path)
    r = run_cli(runner, *EXTRACT, "--dataset", "folder", "--data-dir", "shapes", "--out", store)
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(store)
    assert run_cli(runner, "export", "--features", ".", "--out", tmp_path / "t.parquet").exit_code == 0
    df = pd.read_parquet(tmp_path / "t.parquet")
    ds = load_dataset("folder", data, test_fraction=0.2)
    assert list(df["path"]) == [str(p) for s in ("train", "test") for p in ds.splits[s].files]
    r = run_cli(runner, "export", "--features", tmp_path / "nothing", "--to", "csv")
    assert_one_line_error(r, "not a finished feature store")


def test_image_embedder_gives_the_stores_features_in_a_sklearn_pipeline(tmp_path, runner):
    from PIL import Image
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    from pipeline import ImageEmbedder
    from pipeline.data import load_dataset
    from pipeline.data.images import decode_image

    data = shapes_folder(tmp_path / "shapes", 6)
    store = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--dataset", "folder", "--data-dir", data, "--out", store).exit_code == 0
    f = load_features(store)
    train = load_dataset("folder", data, test_fraction=0.2).splits["train"]
    emb = ImageEmbedder("resnet18", **FAST)
    X = emb.fit(train.files).transform(train.files)
    np.testing.assert_array_equal(X, f.X_train)  # the same recipe, the same engine: the same features
    assert emb.engine_description_["engine"] == f.meta["engine"]["engine"]
    assert emb.get_feature_names_out().shape == (f.X_train.shape[1],)
    imgs = [decode_image(p) for p in train.files[:4]]
    pil = [Image.open(p) for p in train.files[:4]]
    hwc = [np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0] for a in imgs]
    for inputs in (imgs, pil, hwc):
        np.testing.assert_allclose(emb.transform(inputs), f.X_train[:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(emb)).transform(train.files[:4]), X[:4])

    clf = make_pipeline(ImageEmbedder("resnet18", **FAST), LogisticRegression(max_iter=500))
    clf.fit(train.files, train.labels)
    assert clf.score(train.files, train.labels) > 0.8 and clone(clf).get_params()["imageembedder__image_size"] == 48
    name = "ImageEmbedder"
    for check in (check_parameters_default_constructible, check_no_attributes_set_in_init,
                  check_get_params_invariance, check_set_params):
        check(name, ImageEmbedder())
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"^an image array must be uint8 \(0\.\.255\), not float32$"):
        emb.transform([np.zeros((8, 8), np.float32)])


def test_export_never_replaces_a_fifo_or_link_even_with_overwrite(store_with_maps, tmp_path, runner):
    import os

    store, _ = store_with_maps
    fifo, link = tmp_path / "t.csv", tmp_path / "l.csv"
    os.mkfifo(fifo)
    (tmp_path / "mine.txt").write_text("kept")
    link.symlink_to(tmp_path / "mine.txt")
    for path in (fifo, link):
        r = run_cli(runner, "export", "--features", store, "--to", "csv", "--out", path, "--overwrite")
        assert_one_line_error(r, "is not a regular file", "choose another --out")
    assert fifo.is_fifo() and link.is_symlink() and (tmp_path / "mine.txt").read_text() == "kept"


def test_files_are_not_named_after_the_image_folder_changed(tmp_path, runner):
    """Issue 42 row 6: one image added to a class folder after extraction shifted every later row's file name
    in export and neighbors. The folder's content fingerprint is compared first, and the change is said."""
    import shutil

    data = shapes_folder(tmp_path / "shapes", 5)
    store = tmp_path / "s"
    assert run_cli(runner, *EXTRACT, "--dataset", "folder", "--data-dir", data, "--out", store).exit_code == 0
    first = sorted((data / "circle").iterdir())[0]
    shutil.copy(first, first.with_name(f"{first.stem}a{first.suffix}"))  # sorts second: shifts the rest
    r = run_cli(runner, "export", "--features", store, "--to", "csv", "--out", tmp_path / "t.csv")
    assert_one_line_error(r, "images have changed since", "extract it again")
    assert not (tmp_path / "t.csv").exists()
    r = run_cli(runner, "neighbors", "--features", store, first, "-k", 2)
    assert_one_line_error(r, "images have changed since", "extract it again")


def test_image_embedder_decodes_a_pil_image_as_it_decodes_its_file(tmp_path):
    """Issue 42 row 8: an RGBA cut-out, a 16-bit scan and a phone's EXIF-rotated JPEG embedded differently
    as PIL images than as paths (cosine 0.92-0.95). Now bit-identical; the natural (N, 28, 28) array is taken,
    and a read-only array draws no warning."""
    import warnings

    from PIL import Image

    from pipeline import ImageEmbedder
    from pipeline.errors import PipelineError

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # the top half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)).save(tmp_path / "scan.png")
    im = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif)
    paths = [tmp_path / n for n in ("cutout.png", "scan.png", "phone.jpg")]
    emb = ImageEmbedder("resnet18", **FAST).fit()
    np.testing.assert_array_equal(emb.transform([Image.open(p) for p in paths]), emb.transform(paths))

    grey = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    grey.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable" was one
        stacked = emb.transform(grey)
    np.testing.assert_array_equal(stacked, emb.transform([g for g in grey]))
    with pytest.raises(PipelineError, match=r"looks like one \(H, W, C\) image: pass a list"):
        emb.transform(np.zeros((28, 28, 3), np.uint8))


def test_dot_and_root_as_paths(tmp_path, runner, monkeypatch):
    """Issue 42 row 13: `--out .` and a store path of `.` or `/` were `ValueError: PosixPath('.') has an empty
    name`. `.` is the folder it means; `/` is refused in one line, and nothing is written there."""
    from helpers import blobs, write_store

    store = write_store(tmp_path / "st", *blobs(60), *blobs(30, seed=1))
    r = run_cli(runner, "export", "--features", "/", "--to", "csv")
    assert_one_line_error(r, "/ is not a finished feature store (no meta.json); run `pipeline extract` first")
    r = run_cli(runner, "project", "--features", store, "--methods", "pca", "--out", "/")
    assert_one_line_error(r, "--out /: the file system's root cannot be an output")
    monkeypatch.chdir(store)
    out = tmp_path / "o"
    out.mkdir()
    r = run_cli(runner, "export", "--features", ".", "--to", "csv", "--out", out / "t.csv")
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(out)
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "lda", "--grid", "quick", "--out", ".")
    assert r.exit_code == 0, r.output
    assert (out / "results.json").is_file() and (out / "t.csv").is_file()
