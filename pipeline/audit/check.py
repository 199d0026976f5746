"""`pipeline audit`: the test set checked before its numbers are trusted. From a store (its embeddings) and
the images it was made from:

- duplicates: exact (the same decoded pixels) and near (a training image among the NEIGHBORS nearest in the
  embedding, cosine, within a bound calibrated on this store's own recipe, then confirmed on pixels), within
  train, within test and across; grouped, with conflicting labels flagged;
- label issues: cleanlab on out-of-fold probabilities (labels.py);
- outliers: mean cosine distance to the NEIGHBORS nearest training images, OUTLIER_Z robust standard
  deviations above the training images' median;
- every record's test accuracy without the test images that have a training twin, and without the suspect
  labels.

The neighbour search is `apply.neighbors.nearest`, the one `pipeline neighbors` and the galleries use. Its
results and the probabilities are cached in `<out>/audit/` (a crash resumes after them); audit.json is
written atomically, last.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.apply.featurize import build_for, featurize
from pipeline.apply.neighbors import METRIC, nearest
from pipeline.audit import (
    AUDIT,
    AUDIT_CSV,
    CALIBRATION_IMAGES,
    CROPS,
    FORMAT,
    NEIGHBORS,
    OUTLIER_Z,
    PIXEL_CORR,
    PIXEL_MAD,
    SHOWN,
    SIDE,
    read_audit,
)
from pipeline.audit import duplicates as dup
from pipeline.audit import labels as lab
from pipeline.console import content_key, stderr, timed
from pipeline.data.images import from_pil, show_path, to_pil
from pipeline.errors import PipelineError
from pipeline.files import atomic_save, atomic_write, read_json
from pipeline.render import csvfile
from pipeline.render.thumbs import Thumbnails
from pipeline.results import load_predictions, read_results
from pipeline.store.featuresets import FeatureSet, source_images

CACHE = "audit"  # <out>/audit/: the neighbour search and the probabilities of the last audit
PARAMS = {"neighbors": NEIGHBORS, "metric": METRIC, "signature": f"{SIDE}x{SIDE} grey, area-averaged",
          "crops": list(CROPS), "pixel_corr": PIXEL_CORR, "pixel_mad": PIXEL_MAD,
          "calibration_images": CALIBRATION_IMAGES, "outlier_z": OUTLIER_Z, "label_model": lab.MODEL}

# how a copy of an image may differ: the calibration's variants (name -> (scale, JPEG quality or None, crop))
VARIANTS = {"JPEG quality 70 at 80 % size": (0.8, 70, 1.0), "JPEG quality 90 at 125 % size": (1.25, 90, 1.0),
            "centre crop 90 % (PNG)": (1.0, None, 0.9)}


def _variant(img: np.ndarray, scale: float, quality: int | None, crop: float):
    from PIL import Image

    im = to_pil(img)
    w, h = im.size
    if crop < 1:
        cw, ch = max(1, round(w * crop)), max(1, round(h * crop))
        im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if scale != 1:
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.Resampling.BICUBIC)
    return im, quality


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1 - (a * b).sum(1)


def calibrate(fs: FeatureSet, train, device: str, weights: str | None, log) -> dict:
    """The embedding's bound for near duplicates, measured on this store's recipe: seeded training images
    and their VARIANTS embedded together; the bound is the largest image-to-variant cosine distance. Also
    says how many of the variants the pixel check confirms."""
    from PIL import Image

    rng = np.random.default_rng(0)
    n = min(CALIBRATION_IMAGES, len(fs.y_train))
    pick = np.sort(rng.choice(len(fs.y_train), n, replace=False))
    imgs = [train.batch(int(i), int(i) + 1)[0] for i in pick]
    with tempfile.TemporaryDirectory(prefix="pipeline-audit-") as tmp:
        files, sigs = [], []
        for k, img in enumerate(imgs):
            files.append(Path(tmp) / f"{k}.png")
            to_pil(img).save(files[-1])
        own = [dup.signature(img)[1] for img in imgs]
        for v, (scale, quality, crop) in enumerate(VARIANTS.values()):
            for k, img in enumerate(imgs):
                im, q = _variant(img, scale, quality, crop)
                p = Path(tmp) / f"{k}_{v}.{'jpg' if q else 'png'}"
                im.save(p, **({"quality": q} if q else {}))
                files.append(p)
                with Image.open(p) as back:
                    sigs.append((own[k], dup.signature(from_pil(back.convert(im.mode)))[1]))
        bb = build_for(fs.recipe, weights)
        E = featurize(fs.recipe, files, device=device, weights=weights, backbone=bb, progress=False, log=log)
    base, rest = E[:n], E[n:].reshape(len(VARIANTS), n, -1)
    per = {name: _cosine_rows(base, rest[v]) for v, name in enumerate(VARIANTS)}
    corr, mad = dup.pixel_match(np.stack([a for a, _ in sigs]), np.stack([b for _, b in sigs]))
    ok = dup.confirmed(corr, mad).reshape(len(VARIANTS), n)
    bound = round(float(np.ceil(float(max(d.max() for d in per.values())) * 1e4)) / 1e4, 4)  # rounded up
    return {"images": n, "seed": 0, "bound": bound,
            "variants": {name: {"max": round(float(d.max()), 4), "median": round(float(np.median(d)), 4),
                                "pixel_confirmed": round(float(ok[v].mean()), 4)}
                         for v, (name, d) in enumerate(per.items())},
            "pixel_confirmed": round(float(ok.mean()), 4)}


def _store_key(fs: FeatureSet, *parts) -> str:
    """What an output was made from: the store's fingerprint and `parts` (default: every parameter)."""
    return content_key([fs.fingerprint, *(parts or [PARAMS])])


def _cached_search(cache: Path, key: str, fs: FeatureSet, log, n_jobs) -> tuple[np.ndarray, ...]:
    """(all->train indices, distances, test->test indices, distances), k = NEIGHBORS + 1 (the image itself
    is among its own neighbours), from the cache when it is this store's."""
    names = ("all_train_idx", "all_train_dist", "test_test_idx", "test_test_dist")
    n_all, n_test = len(fs.y_train) + len(fs.y_test), len(fs.y_test)
    if (read_json(cache / "key.json") or {}).get("search") == key:
        got = _load_cache(cache, names)
        if got is not None and got[0].shape[0] == n_all and got[1].shape == got[0].shape \
                and got[2].shape[0] == n_test and got[3].shape == got[2].shape and got[0].ndim == 2 \
                and (got[0].size == 0 or (got[0].min() >= 0 and got[0].max() < len(fs.y_train))):
            return got  # else a damaged or foreign cache: searched again, never indexed
    t = time.perf_counter()
    X_all = np.concatenate([fs.X_train, fs.X_test])
    a_idx, a_dist = nearest(fs.X_train, X_all, NEIGHBORS + 1, n_jobs)
    t_idx, t_dist = nearest(fs.X_test, fs.X_test, NEIGHBORS + 1, n_jobs) if len(fs.X_test) > 1 else (
        np.zeros((len(fs.X_test), 0), int), np.zeros((len(fs.X_test), 0)))
    log(f"audit: nearest neighbours of {len(X_all):,} images in {time.perf_counter() - t:.1f} s")
    cache.mkdir(parents=True, exist_ok=True)
    for n, a in zip(names, (a_idx, a_dist, t_idx, t_dist)):
        atomic_save(cache / f"{n}.npy", a)
    _set_cache_key(cache, search=key)
    return a_idx, a_dist, t_idx, t_dist


def _load_cache(cache: Path, names) -> tuple[np.ndarray, ...] | None:
    """The cached arrays, or None where one is missing or unreadable."""
    try:
        return tuple(np.load(cache / f"{n}.npy", allow_pickle=False) for n in names)
    except (OSError, ValueError):
        return None


def _set_cache_key(cache: Path, **keys) -> None:
    atomic_write(cache / "key.json", json.dumps({**(read_json(cache / "key.json") or {}), **keys}))


def _cached_probabilities(cache: Path, fs: FeatureSet, cv: int, n_jobs, log):
    """(out-of-fold train probabilities, test probabilities, folds), from the cache when it is this store's."""
    mkey = _store_key(fs, lab.MODEL, cv)
    keys = read_json(cache / "key.json") or {}
    if keys.get("probabilities") == mkey:
        got = _load_cache(cache, ("probs_train", "probs_test"))
        if got is not None and got[0].shape == (len(fs.y_train), len(fs.classes)) \
                and got[1].shape == (len(fs.y_test), len(fs.classes)):
            return got[0], got[1], keys.get("folds", cv)
    t = time.perf_counter()
    P_tr, P_te, folds = lab.probabilities(fs.X_train, fs.y_train, fs.X_test, len(fs.classes), cv, n_jobs)
    log(f"audit: out-of-fold probabilities ({folds} folds, {lab.MODEL}) in {time.perf_counter() - t:.1f} s")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_save(cache / "probs_train.npy", P_tr)
    atomic_save(cache / "probs_test.npy", P_te)
    _set_cache_key(cache, probabilities=mkey, folds=folds)
    return P_tr, P_te, folds


def _old_audit(path: Path, overwrite: bool) -> dict | None:
    """The audit.json at `path`; a damaged one is one line, unless --overwrite asks for it to be made again (a
    file that is not pipeline's audit file at all is never replaced)."""
    try:
        return read_audit(path)
    except PipelineError:
        if overwrite and (read_json(path) or {}).get("format") == FORMAT:
            return None
        raise


def _refuse_other_data(old: dict | None, fs: FeatureSet, path: Path, overwrite: bool) -> None:
    if old is None or overwrite:
        return
    s = old.get("store", {})
    if s.get("dataset") != fs.dataset or s.get("labels_sha256") != fs.labels_sha256:
        raise PipelineError(f"{path} holds the audit of other data ({s.get('name')} of {s.get('dataset')}, "
                            f"{s.get('rows')}); choose another --out, or pass --overwrite to replace it")


def accuracy_rows(records: list[dict], out: Path, y_test: np.ndarray, leaked: set[int], suspect: set[int]
                  ) -> list[dict]:
    """Each record with its saved test predictions: accuracy on all test images, without those with a
    training twin, and without those whose label is suspect."""
    rows = []
    keep_leak = np.array([i not in leaked for i in range(len(y_test))], bool)
    keep_label = np.array([i not in suspect for i in range(len(y_test))], bool)
    for r in records:
        pred = load_predictions(out, r) if r.get("n_test") == len(y_test) else None
        if pred is None:
            continue
        right = pred == y_test
        rows.append({"feature_set": r["feature_set"], "classifier": r["classifier"], "label": r.get("label"),
                     "test_accuracy": r["test_accuracy"], "all": _share(right),
                     "without_train_twins": _share(right[keep_leak]), "removed_twins": int((~keep_leak).sum()),
                     "without_label_issues": _share(right[keep_label]),
                     "removed_label_issues": int((~keep_label).sum())})
    return rows


def _share(right: np.ndarray) -> float | None:
    return round(float(right.mean()), 4) if len(right) else None


def _records_key(records: list[dict]) -> list:
    return [[r["feature_set"], r["classifier"], r.get("features_fingerprint"), r["test_accuracy"]] for r in records]


def _up_to_date(a: dict | None, fs: FeatureSet, records: list[dict]) -> bool:
    """An audit.json made from these features with these parameters, scoring these records."""
    return bool(a) and a.get("format") == FORMAT and a.get("key") == _store_key(fs) \
        and a.get("records_key") == _records_key(records)


def is_current(out: Path, fs: FeatureSet) -> bool:
    try:
        old = read_audit(Path(out) / AUDIT)
    except PipelineError:  # not an audit file, or a damaged one: the audit says so, in one line
        return False
    return _up_to_date(old, fs, read_results(out))


def audit_study(store: str, dataset: str, data_dir, limit: int | None, test_fraction: float | None, out: Path, *,
                cv: int = 3, device: str = "auto", weights: str | None = None, n_jobs: int | None = None,
                overwrite: bool = False, log: Callable[[str], None] = stderr) -> dict:
    """`pipeline audit`: the store (a backbone name or a path) of the dataset's images, audited into `out`."""
    from pipeline.classical.specs import check_folds
    from pipeline.data.folder import refuse_output_inside
    from pipeline.store.featuresets import load_feature_set

    check_folds(cv)
    out = Path(out)
    if dataset == "folder":
        refuse_output_inside(out, data_dir)
    fs = load_feature_set(store, dataset, data_dir, limit, test_fraction=test_fraction)
    return audit(fs, out, cv=cv, device=device, weights=weights, n_jobs=n_jobs, overwrite=overwrite, log=log)


def audit(fs: FeatureSet, out: Path, *, cv: int = 3, device: str = "auto", weights: str | None = None,
          n_jobs: int | None = None, overwrite: bool = False, log: Callable[[str], None] = stderr) -> dict:
    """Audit the images of `fs` (an embedding store's feature set) into out/audit.json and out/audit.csv."""
    _refuse_without_embeddings(fs)
    out = Path(out)
    lab.cleanlab_filter()  # a missing cleanlab is said before any work
    old = _old_audit(out / AUDIT, overwrite)
    _refuse_other_data(old, fs, out / AUDIT, overwrite)
    records = read_results(out)
    if _up_to_date(old, fs, records):
        log(f"audit: {out / AUDIT} is up to date")
        return old
    seconds = {}
    with timed(seconds, "total"):
        images = _Images(fs, source_images(fs))
        found = _find_problems(images, out / CACHE, seconds, cv=cv, device=device, weights=weights, n_jobs=n_jobs,
                               log=log)
        acc = accuracy_rows(records, out, fs.y_test, found.leaked, set(found.issues["test"]))
        label_items, outlier_items = _label_items(images, found), _outlier_items(images, found)
        thumbs = _shown_thumbnails(images, found.groups, label_items, outlier_items)
    doc = _document(images, records, found, label_items, outlier_items, acc, thumbs, seconds)
    _write_csv(out / AUDIT_CSV, doc, images.path_of)
    atomic_write(out / AUDIT, json.dumps(doc))
    counts = doc["duplicates"]["counts"]
    log(f"audit: {len(found.groups)} duplicate groups ({counts['test_with_train_twin']} test images with a training "
        f"twin), {len(found.issues['train'])} + {len(found.issues['test'])} label issues (train + test), "
        f"{len(outlier_items)} outliers; {out / AUDIT}, {out / AUDIT_CSV} ({seconds['total']:.0f} s)")
    return doc


def _refuse_without_embeddings(fs: FeatureSet) -> None:
    if fs.name == "raw" or "backbone" not in fs.meta:
        raise PipelineError(f"{fs.name}: the audit needs an embedding store (its neighbours find near "
                            f"duplicates), not raw pixels; pass --features BACKBONE or a store path")
    if not len(fs.y_train):
        raise PipelineError(f"{fs.meta.get('path', fs.name)} holds no training images to audit against")


class _Images:
    """The audited images, numbered as one list (train 0..n_tr-1, then test), and where each one's file is."""

    def __init__(self, fs: FeatureSet, ds):
        self.fs, self.ds = fs, ds
        self.train, self.test = ds.splits["train"], ds.splits.get("test")
        self.n_tr, self.n_te = len(fs.y_train), len(fs.y_test)
        self.y_all = np.concatenate([fs.y_train, fs.y_test])
        self.root = Path(ds.source) if ds.source else None

    def where(self, g: int) -> tuple[str, int]:
        """The split and index of image `g` of the one list."""
        return ("train", g) if g < self.n_tr else ("test", g - self.n_tr)

    def path_of(self, split: str, i: int) -> str:
        """An image folder's file, relative to the folder (audit.json and audit.csv name the folder once)."""
        files = self.ds.splits[split].files
        if files is None:
            return ""
        f = Path(files[i])
        return show_path(f.relative_to(self.root) if self.root is not None and f.is_relative_to(self.root) else f)

    def image(self, split: str, i: int) -> np.ndarray:
        return self.ds.splits[split].batch(i, i + 1)[0]


@dataclass
class _Found:
    """What the audit found: the calibration, the duplicate groups (and the test images with a training twin,
    the train-test pairs), the probabilities and label issues per split, the outliers."""
    calibration: dict
    groups: list[dict]
    leaked: set[int]
    pairs_across: int
    probabilities: dict[str, np.ndarray]
    folds: int
    issues: dict[str, list[int]]
    outliers: dict


def _find_problems(images: _Images, cache: Path, seconds: dict, *, cv: int, device: str, weights: str | None,
                   n_jobs: int | None, log) -> _Found:
    """Every check, each step timed into `seconds`; the neighbour search and the probabilities cached in `cache`."""
    fs = images.fs
    with timed(seconds, "pixel signatures"):
        hashes, sigs = _pixel_signatures(images)
    with timed(seconds, "neighbour search"):
        search = _cached_search(cache, _store_key(fs, NEIGHBORS, METRIC), fs, log, n_jobs)
    with timed(seconds, "calibration"):
        cal = calibrate(fs, images.train, device, weights, log)
    with timed(seconds, "duplicates"):
        groups, leaked, pairs_across = _duplicates(images, search, cal["bound"], hashes, sigs)
    with timed(seconds, "label issues"):
        P_tr, P_te, folds = _cached_probabilities(cache, fs, cv, n_jobs, log)
        issues = {"train": lab.label_issues(fs.y_train, P_tr),
                  "test": lab.label_issues(fs.y_test, P_te) if images.n_te else []}
    return _Found(cal, groups, leaked, pairs_across, {"train": P_tr, "test": P_te}, folds, issues,
                  _outliers(images, search[0], search[1]))


def _pixel_signatures(images: _Images) -> tuple[list[str], np.ndarray]:
    """(hashes, signatures) of every image of the one list."""
    h_tr, s_tr = dup.signatures(images.train, "train")
    h_te, s_te = dup.signatures(images.test, "test") if images.n_te else (
        [], np.empty((0, len(CROPS), SIDE * SIDE), np.float32))
    return h_tr + h_te, np.concatenate([s_tr, s_te])


def _duplicates(images: _Images, search: tuple[np.ndarray, ...], bound: float, hashes: list[str],
                sigs: np.ndarray) -> tuple[list[dict], set[int], int]:
    """(the duplicate groups, the test images with a training twin, the number of train-test pairs): exact
    (the same hash) and near (neighbours within `bound` that the pixels confirm)."""
    exact = set(dup.exact_pairs(hashes))  # (first, later): ordered as the candidates are
    near = _near_pairs(sorted(_candidates(images, search, bound) - exact), sigs)
    groups = _duplicate_groups(images, sorted(exact | near), hashes)
    leaked = {m[1] for grp in groups if len(grp["splits"]) == 2 for m in grp["members"] if m[0] == "test"}
    pairs_across = sum(1 for a, b in exact | near if (a < images.n_tr) != (b < images.n_tr))
    return groups, leaked, pairs_across


def _candidates(images: _Images, search: tuple[np.ndarray, ...], bound: float) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j in the one list, that the neighbour search finds within `bound` of each other: each
    image to its nearest training images, each test image to its nearest test images."""
    a_idx, a_dist, t_idx, t_dist = search
    n_tr = images.n_tr
    cand = set()
    for i in range(n_tr + images.n_te):
        for j, d in zip(a_idx[i], a_dist[i]):
            if int(j) != i and d <= bound:
                cand.add((min(i, int(j)), max(i, int(j))))
    for t_ in range(images.n_te):
        for j, d in zip(t_idx[t_], t_dist[t_]):
            if int(j) != t_ and d <= bound:
                a, b = n_tr + t_, n_tr + int(j)
                cand.add((min(a, b), max(a, b)))
    return cand


def _near_pairs(cand: list[tuple[int, int]], sigs: np.ndarray) -> set[tuple[int, int]]:
    """The candidate pairs whose pixel signatures match."""
    near = set()
    for c0 in range(0, len(cand), 1 << 15):  # in chunks: the signatures of every pair at once would be GBs
        ci = np.array(cand[c0:c0 + (1 << 15)])
        near |= {(int(a), int(b)) for (a, b), ok in zip(ci, dup.confirmed(*dup.pixel_match(sigs[ci[:, 0]],
                                                                                           sigs[ci[:, 1]]))) if ok}
    return near


def _duplicate_groups(images: _Images, pairs: list[tuple[int, int]], hashes: list[str]) -> list[dict]:
    """The connected duplicate pairs as groups: exact (one hash) or near, their members, labels and splits."""
    groups = []
    for members in dup.groups(images.n_tr + images.n_te, pairs):
        kinds = {hashes[g] for g in members}
        labels = sorted({int(images.y_all[g]) for g in members})
        groups.append({"kind": "exact" if len(kinds) == 1 else "near",
                       "members": [[*images.where(g), int(images.y_all[g])] for g in members], "labels": labels,
                       "conflicting_labels": len(labels) > 1,
                       "splits": sorted({images.where(g)[0] for g in members})})
    return groups


def _outliers(images: _Images, a_idx: np.ndarray, a_dist: np.ndarray) -> dict:
    """Each image's mean distance to its NEIGHBORS nearest training images (itself left out); the outliers are
    OUTLIER_Z robust standard deviations above the training images' median, farthest first."""
    n_tr = images.n_tr
    score = np.empty(n_tr + images.n_te)
    for i in range(n_tr + images.n_te):
        d = [dd for j, dd in zip(a_idx[i], a_dist[i]) if not (i < n_tr and int(j) == i)][:NEIGHBORS]
        score[i] = float(np.mean(d)) if d else 0.0
    med = float(np.median(score[:n_tr]))
    spread = float(1.4826 * np.median(np.abs(score[:n_tr] - med)))
    cut = med + OUTLIER_Z * max(spread, 1e-6)
    return {"score": score, "median": med, "cut": cut,
            "order": [int(i) for i in np.argsort(-score, kind="stable") if score[i] > cut]}


def _label_items(images: _Images, found: _Found) -> dict[str, list[dict]]:
    """Per split, each label issue: the given label, the suggested one, the model's confidence in the given one."""
    y = {"train": images.fs.y_train, "test": images.fs.y_test}
    P = found.probabilities
    return {split: [{"index": i, "given": int(y[split][i]), "suggested": int(P[split][i].argmax()),
                     "self_confidence": round(float(P[split][i, y[split][i]]), 4),
                     "path": images.path_of(split, i)} for i in idx]
            for split, idx in found.issues.items()}


def _outlier_items(images: _Images, found: _Found) -> list[dict]:
    score = found.outliers["score"]
    return [{"split": images.where(g)[0], "index": images.where(g)[1], "label": int(images.y_all[g]),
             "score": round(float(score[g]), 4), "path": images.path_of(*images.where(g))}
            for g in found.outliers["order"]]


def _shown_thumbnails(images: _Images, groups: list[dict], label_items: dict[str, list[dict]],
                      outlier_items: list[dict]) -> Thumbnails:
    """The thumbnails of what the report shows: the first SHOWN groups (8 members each), label issues and
    outliers."""
    thumbs = Thumbnails(images.image)
    for grp in groups[:SHOWN]:
        for split, i, _ in grp["members"][:8]:
            thumbs.key(split, i)
    for split, items in label_items.items():
        for it in items[:SHOWN]:
            thumbs.key(split, it["index"])
    for it in outlier_items[:SHOWN]:
        thumbs.key(it["split"], it["index"])
    return thumbs


def _document(images: _Images, records: list[dict], found: _Found, label_items: dict[str, list[dict]],
              outlier_items: list[dict], acc: list[dict], thumbs: Thumbnails, seconds: dict) -> dict:
    """audit.json's content."""
    fs, ds = images.fs, images.ds
    return {"format": FORMAT, "key": _store_key(fs), "records_key": _records_key(records),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "store": {"name": fs.name, "path": fs.meta.get("path"), "dataset": fs.dataset,
                      "fingerprint": fs.fingerprint, "labels_sha256": fs.labels_sha256, "recipe": _portable(fs.recipe),
                      "folder": Path(ds.source).name if fs.dataset == "folder" and ds.source else None,
                      "rows": {"train": images.n_tr, "test": images.n_te}},
            "classes": list(fs.classes), "params": PARAMS,
            "thresholds": {"embedding_cosine": found.calibration["bound"], "pixel_corr": PIXEL_CORR,
                           "pixel_mad": PIXEL_MAD, "outlier_distance": round(found.outliers["cut"], 4),
                           "outlier_median": round(found.outliers["median"], 4),
                           "label_issues": "cleanlab find_label_issues (defaults), ranked by self-confidence"},
            "calibration": found.calibration,
            "duplicates": {"counts": _duplicate_counts(found), "groups": found.groups},
            "label_issues": _label_issues_section(fs, found, label_items),
            "outliers": {"count": len(outlier_items), "items": outlier_items},
            "accuracy": acc, "seconds": seconds, "thumbs": thumbs}


def _duplicate_counts(found: _Found) -> dict:
    groups = found.groups
    counts = {f"groups_{s}": sum(1 for g in groups if g["splits"] == [s]) for s in ("train", "test")}
    counts.update(groups_across=sum(1 for g in groups if len(g["splits"]) == 2), pairs_train_test=found.pairs_across,
                  test_with_train_twin=len(found.leaked), exact_groups=sum(g["kind"] == "exact" for g in groups),
                  near_groups=sum(g["kind"] == "near" for g in groups),
                  conflicting_groups=sum(g["conflicting_labels"] for g in groups))
    return counts


def _label_issues_section(fs: FeatureSet, found: _Found, label_items: dict[str, list[dict]]) -> dict:
    """The label issues: the model, the share flagged per split and per class, the classes too small to check,
    and the items per split."""
    y = {"train": fs.y_train, "test": fs.y_test}
    issues = found.issues
    share = {s: round(len(issues[s]) / max(len(y[s]), 1), 4) for s in ("train", "test")}
    per_class = {s: [round(float(np.isin(np.flatnonzero(y[s] == c), issues[s]).mean()), 4) if (y[s] == c).any()
                     else None for c in range(len(fs.classes))] for s in ("train", "test")}
    return {"model": lab.MODEL, "folds": found.folds, "share": share, "per_class": per_class,
            "too_few_to_check": {s: lab.small_classes(y[s], len(fs.classes)) for s in y}, **label_items}


def _portable(recipe: dict) -> dict:
    """The store's recipe without this machine's paths (the weights by id and sha256, not by file)."""
    r = {k: v for k, v in recipe.items() if k != "store"}
    if isinstance(r.get("weights"), dict):
        r["weights"] = {k: v for k, v in r["weights"].items() if k != "file"}
    return r


def _write_csv(path: Path, doc: dict, path_of) -> None:
    """One row per flagged image: what is wrong, where it is, and what the audit suggests."""
    classes = doc["classes"]
    rows = []
    for g, grp in enumerate(doc["duplicates"]["groups"], 1):
        for split, i, label in grp["members"]:
            rows.append([f"{grp['kind']}_duplicate", g, split, i, path_of(split, i), classes[label], "", ""])
    for split in ("train", "test"):
        for it in doc["label_issues"][split]:
            rows.append(["label_issue", "", split, it["index"], it["path"], classes[it["given"]],
                         classes[it["suggested"]], f"{it['self_confidence']:.4f}"])
    for it in doc["outliers"]["items"]:
        rows.append(["outlier", "", it["split"], it["index"], it["path"], classes[it["label"]], "",
                     f"{it['score']:.4f}"])
    atomic_write(path, csvfile.write(["problem", "group", "split", "index", "file", "label", "suggested", "score"],
                                     rows))


def summary_lines(doc: dict) -> list[str]:
    """What `pipeline audit` prints (standard output): the duplicates, the label issues and outliers, and each
    record's test accuracy without the flagged images."""
    c, li = doc["duplicates"]["counts"], doc["label_issues"]
    lines = [f"duplicates: {c['exact_groups']} exact and {c['near_groups']} near groups ({c['groups_train']} within "
             f"train, {c['groups_test']} within test, {c['groups_across']} across); {c['test_with_train_twin']:,} "
             f"test images have a training twin ({c['conflicting_groups']} groups with conflicting labels)",
             f"label issues: {len(li['train']):,} train ({li['share']['train']:.2%}), {len(li['test']):,} test "
             f"({li['share']['test']:.2%}); outliers: {doc['outliers']['count']:,}"]
    for a in doc["accuracy"]:
        lines.append(f"  {a['feature_set']:>20} {a['label'] or a['classifier']:<24} test {a['all']:.4f}   without "
                     f"train twins {_accuracy_text(a['without_train_twins'])}   without label issues "
                     f"{_accuracy_text(a['without_label_issues'])}")
    return lines


def _accuracy_text(x) -> str:
    return "–" if x is None else f"{x:.4f}"
