"""`pipeline curve`: label-efficiency curves on stored features (synthetic blob stores made here): stratified,
seeded draws; the "all" point equal to classify's for the same model and parameters; k capped and said; a
one-class training split refused; the break-even and ratio; the report's section; skipped when up to date."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, blobs, run_cli, write_store

from pipeline.classical import curve as lc

TIMING = {"fit_seconds"}


def _store(tmp_path, name, spread, n_train=300, n_test=200, classes=None, y_train=None, dim=64):
    X, y = blobs(n_train, dim=dim, spread=spread)
    Xt, yt = blobs(n_test, dim=dim, seed=1, spread=spread)
    return write_store(tmp_path / "features" / name, X, y if y_train is None else y_train, Xt, yt,
                       classes=classes, backbone=name)


def _curve(runner, tmp_path, *stores, out="rep", extra=()):
    return run_cli(runner, "curve", "--features", ",".join(map(str, stores)), "--out", tmp_path / out,
                   "--labels-per-class", "1,2,5,10", "--draws", 3, *extra)


def _records(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in json.loads(path.read_text())
            if r.get("kind") == "curve"]


def test_draws_are_stratified_seeded_and_capped():
    y = np.repeat(np.arange(4), [10, 10, 10, 3])
    a, capped = lc.draw(y, 5, seed=7)
    assert np.bincount(y[a]).tolist() == [5, 5, 5, 3] and capped == {3: 3}  # class 3 has only 3: all of them
    assert np.array_equal(a, lc.draw(y, 5, seed=7)[0])  # the same seed, the same rows
    assert not np.array_equal(a, lc.draw(y, 5, seed=8)[0])  # another seed, other rows
    assert len(set(a.tolist())) == len(a)  # without replacement
    assert np.array_equal(lc.draw(y, lc.ALL, 0)[0], np.arange(len(y)))
    seeds = [lc.seed_of(k, d) for k in lc.KS for d in range(lc.DRAWS)]
    assert len(set(seeds)) == len(seeds)  # every draw of every point has its own seed


def test_same_seeds_give_the_same_records_and_a_rerun_is_skipped(tmp_path, runner):
    weak, strong = _store(tmp_path, "weak", 4.0), _store(tmp_path, "strong", 1.5)
    r = _curve(runner, tmp_path, weak, strong, out="a")
    assert r.exit_code == 0, r.output
    r2 = _curve(runner, tmp_path, weak, strong, out="b")
    assert r2.exit_code == 0, r2.output
    a, b = _records(tmp_path / "a" / "results.json"), _records(tmp_path / "b" / "results.json")
    assert a == b and len(a) == 2 * 3 * 5  # two sets, three classifiers, four k and all
    for rec in a:
        assert len(rec["draws"]) == (1 if rec["k"] == "all" else 3)
        for d in rec["draws"]:  # each draw names its seed, and refitting it from the seed gives its accuracy
            assert d["seed"] == lc.seed_of(rec["k"], rec["draws"].index(d))
            if rec["k"] != "all":
                assert d["n_train"] == 10 * rec["k"]
        assert rec["mean"] == pytest.approx(np.mean([d["test_accuracy"] for d in rec["draws"]]))
    from pipeline.store.featuresets import load_feature_set

    rec = next(r for r in a if r["feature_set"] == "weak" and r["classifier"] == "logreg" and r["k"] == 5)
    fs = load_feature_set(str(weak), "fashion-mnist")
    again = lc.fit_point(fs, "logreg", 5, rec["draws"][1]["seed"], rec["draws"][1]["params"])
    assert again["test_accuracy"] == rec["draws"][1]["test_accuracy"]
    strong_rec = [r for r in a if r["feature_set"] == "strong"]
    assert np.mean([r["mean"] for r in strong_rec]) > np.mean([r["mean"] for r in a if r["feature_set"] == "weak"])
    before = (tmp_path / "a" / "results.json").read_text()
    r3 = _curve(runner, tmp_path, weak, strong, out="a")
    assert r3.exit_code == 0 and (tmp_path / "a" / "results.json").read_text() == before  # nothing refitted


def test_the_all_point_equals_classify_for_the_same_model_and_parameters(tmp_path, runner):
    store = _store(tmp_path, "emb", 8.0)  # overlapping blobs: neither model is perfect
    r = _curve(runner, tmp_path, store, extra=("--classifiers", "logreg,knn"))
    assert r.exit_code == 0, r.output
    curves = {(c["classifier"]): c for c in _records(tmp_path / "rep" / "results.json") if c["k"] == "all"}
    C = curves["logreg"]["draws"][0]["params"]["C"]
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"logreg": {"clf__C": [C]}, "knn": {"clf__n_neighbors": [5]}}))
    r = run_cli(runner, "classify", "--features", store, "--classifiers", "logreg,knn", "--grid", grid, "--out",
                tmp_path / "rep")
    assert r.exit_code == 0, r.output
    recs = {x["classifier"]: x for x in json.loads((tmp_path / "rep" / "results.json").read_text())
            if x.get("kind") != "curve"}
    assert recs["logreg"]["test_accuracy"] < 0.95 and recs["knn"]["test_accuracy"] < 0.95
    for c in ("logreg", "knn"):
        assert curves[c]["mean"] == recs[c]["test_accuracy"], c
    assert len(_records(tmp_path / "rep" / "results.json")) == 2 * 5  # classify kept the curve's records


def test_k_above_a_class_is_capped_and_named_in_the_output_and_report(tmp_path, runner):
    y = np.arange(300) % 10
    y[y == 3] = 0  # class 3 ("Dress") gets 4 images only
    y[[3, 13, 23, 33]] = 3
    y[y == 9] = 1  # and class 9 ("Boot") none: its test images can only be wrong
    store = _store(tmp_path, "emb", 2.0, y_train=y, classes=["T-shirt", "Trouser", "Pullover", "<b>Dress</b>",
                                                             "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"])
    r = _curve(runner, tmp_path, store)
    assert r.exit_code == 0, r.output
    recs = _records(tmp_path / "rep" / "results.json")
    k5 = next(x for x in recs if x["k"] == 5 and x["classifier"] == "ncm")
    assert k5["capped"] == {"<b>Dress</b>": 4, "Boot": 0} and all(d["n_train"] == 8 * 5 + 4 for d in k5["draws"])
    assert next(x for x in recs if x["k"] == 2)["capped"] == {"Boot": 0}
    assert "5 per class: <b>Dress</b> (4), Boot (0)" in r.stdout and "<b>Dress</b> (4), Boot (0) have" in r.stderr
    r = run_cli(runner, "report", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "&lt;b&gt;Dress&lt;/b&gt; (4), Boot (0) had fewer" in page and "<b>Dress</b>" not in page
    assert 'id="curve"' in page and "data:image/png;base64" in page


def test_a_one_class_training_split_and_bad_points_are_one_line(tmp_path, runner, monkeypatch):
    store = _store(tmp_path, "one", 1.0, y_train=np.zeros(300, dtype=np.int64))
    assert_one_line_error(_curve(runner, tmp_path, store), "every training image is of one class (T-shirt/top)",
                          "two classes at least")
    assert not (tmp_path / "rep" / "results.json").exists()
    ok = _store(tmp_path, "ok", 1.0)
    assert_one_line_error(run_cli(runner, "curve", "--features", ok, "--labels-per-class", "1,ten", "--out",
                                  tmp_path / "rep"), "--labels-per-class 1,ten: give whole numbers")
    assert_one_line_error(run_cli(runner, "curve", "--features", ok, "--draws", 1, "--out", tmp_path / "rep"),
                          "--draws 1")
    # a folder holding another dataset's curve: one line before any fit, its records kept
    r = _curve(runner, tmp_path, ok, out="other")
    assert r.exit_code == 0, r.output
    before = (tmp_path / "other" / "results.json").read_text()
    other = _store(tmp_path, "other", 1.0, y_train=np.arange(300)[::-1] % 10)
    monkeypatch.setattr(lc, "point_record", lambda *a, **k: pytest.fail("fitted before the refusal"))
    assert_one_line_error(_curve(runner, tmp_path, other, out="other"), "holds results for other data")
    assert (tmp_path / "other" / "results.json").read_text() == before
    assert_one_line_error(run_cli(runner, "curve", "--features", ok, "--classifiers", "svc", "--out",
                                  tmp_path / "rep"), "svc")


def _rec(fs, k, mean, n_all=6000):
    return {"feature_set": fs, "classifier": "logreg", "k": k, "mean": mean, "n_train_all": n_all, "n_classes": 10}


def test_break_even_interpolates_on_log_k_and_gives_the_ratio():
    recs = [_rec("raw", 1, 0.5), _rec("raw", "all", 0.80),
            _rec("emb", 1, 0.70), _rec("emb", 2, 0.75), _rec("emb", 5, 0.85), _rec("emb", "all", 0.9),
            _rec("never", 1, 0.3), _rec("never", "all", 0.79), _rec("first", 1, 0.81), _rec("first", "all", 0.9)]
    be = {b["feature_set"]: b for b in lc.break_even(recs)}
    assert be["emb"]["grid_k"] == 5 and be["emb"]["k"] == pytest.approx(10 ** 0.5)  # halfway between 2 and 5
    assert be["emb"]["ratio"] == pytest.approx(600 / 10 ** 0.5)
    said = lc.statement(be["emb"])
    assert "With 5 labels per class, emb embeddings match raw pixels trained on all 600 per class (0.8000, " \
           "logistic regression); interpolated, about 3.2 per class" in said and "about 190x" in said
    assert be["never"]["k"] is None and "do not reach" in lc.statement(be["never"])
    assert be["first"]["at_first"] and "at least 600x fewer" in lc.statement(be["first"])
    assert lc.break_even([r for r in recs if r["feature_set"] != "raw"]) == []  # no raw pixels: nothing said
