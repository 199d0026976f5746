"""The feature store: a folder readable with numpy alone (no pickle), memory-mappable.

    <out>/X_train.npy  float32 (n_train, dim)      <out>/y_train.npy  int64 (n_train,)
    <out>/X_test.npy   float32 (n_test, dim)       <out>/y_test.npy   int64 (n_test,)
    <out>/meta.json    how it was made (enough to rebuild it); its presence marks a finished store

While it is written, everything lives in `<out>.partial/` (rows are written into preallocated .npy files at
their offsets; at most every COMMIT_SECONDS the data is synced and `progress.json` records the rows done,
atomically) and `.<out>.lock` (hidden, beside it)
holds an exclusive lock, released by the OS even on kill -9. Finishing renames `<out>.partial` to `<out>`, so a
folder named `<out>` is always complete. The same extraction run again resumes from `progress.json`.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.faults import fault_point
from pipeline.files import (
    check_schema,
    config_hash,
    flock,
    fsync_dir,
    has_fields,
    io_error,
    named,
    read_json,
    remove_stale_tmp,
    write_json,
)

FORMAT_VERSION = 1
SPLITS = ("train", "test")
COMMIT_SECONDS = 0.5  # at most this much finished work is redone after a crash
MARKER = ".pipeline-partial"  # in <out>.partial: this folder is pipeline's own unfinished work
STORE_FILES = {f"{k}.npy" for k in ("X_train", "y_train", "X_test", "y_test")} | {"meta.json", "progress.json",
                                                                                   MARKER}
FEATURES_ROOT = Path("features")  # stores live in features/<dataset>/<backbone>/ unless --out says otherwise


def store_dirname(backbone: str) -> str:
    """A backbone's store folder name under features/<dataset>/: `timm:NAME` (or `timm:hf-hub:org/name`) made
    path-safe."""
    return re.sub(r"[^\w.-]+", "-", backbone)


def store_path(dataset_slug: str, backbone: str, suffix: str = "", root: Path = FEATURES_ROOT) -> Path:
    """Where a backbone's store of a dataset goes by default: features/<dataset>/<backbone><suffix>."""
    return Path(root) / dataset_slug / f"{store_dirname(backbone)}{suffix}"


def _only_store_files(folder: Path) -> bool:
    """Whether a folder holds nothing but what a store (finished or not) is made of."""
    return all(p.name in STORE_FILES for p in folder.iterdir())


@dataclass
class Features:
    """A finished store's arrays and its meta.json (`load_features`); `FeatureSet` adds what a study compares."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    meta: dict

    def __iter__(self):  # X_train, y_train, X_test, y_test, meta = load_features(path)
        return iter((self.X_train, self.y_train, self.X_test, self.y_test, self.meta))


def load_features(path: str | os.PathLike, mmap: bool = True) -> Features:
    """Read a finished store; arrays are memory-mapped read-only unless `mmap=False`. Before anything is
    read, every array is checked against meta.json (present, its dtype and shape, its file's length), then
    the labels (their sha256 and range); a damaged store is one line."""
    path = named(path)
    if not (path / "meta.json").is_file():
        partial = path.with_name(path.name + ".partial") if path.name else None  # the root has no sibling
        hint = (f"; an unfinished extraction is in {partial}: rerun the same `pipeline extract` to finish it"
                if partial is not None and partial.exists() else "; run `pipeline extract` first")
        raise PipelineError(f"{path} is not a finished feature store (no meta.json){hint}")
    meta = read_json(path / "meta.json")
    if not is_store_meta(meta):
        raise PipelineError(f"{path}: damaged feature store (meta.json is not valid store metadata); "
                            f"re-extract it with --overwrite")
    check_schema(meta, META_SCHEMA, path / "meta.json", "re-extract the store with --overwrite")
    damage = array_damage(path, meta)
    if damage:
        raise PipelineError(f"{path}: damaged feature store ({damage}); {REPAIR}")
    arrays = {}
    try:
        for s in SPLITS:
            if s not in meta["rows"]:  # e.g. a class-folder root: a test split only, and no training rows
                arrays[f"X_{s}"] = np.empty((0, int(meta.get("dim", 0))), np.float32)
                arrays[f"y_{s}"] = np.empty(0, np.int64)
                continue
            for k in (f"X_{s}", f"y_{s}"):
                arrays[k] = np.load(path / f"{k}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: damaged feature store ({e}); {REPAIR}") from None
    bad = label_damage(meta, {s: arrays[f"y_{s}"] for s in meta["rows"]})
    if bad:
        raise PipelineError(f"{path}/{bad}; {REPAIR}")
    return Features(meta=meta, **arrays)


_NAME = {"type": "string", "minLength": 1}
# meta.json, declaratively: the fields every reader of a store uses, with their types (extract writes more)
META_SCHEMA = {"type": "object", "required": ["rows", "dim", "dataset"], "properties": {
    "rows": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "integer", "minimum": 0}},
    "dim": {"type": "integer", "minimum": 0},
    "image_size": {"type": ["integer", "null"], "minimum": 1},
    "precision": {"type": ["string", "null"]},
    "backbone": {"type": "object", "required": ["name"], "properties": {"name": _NAME}},
    "dataset": {"type": "object", "required": ["name", "classes"], "properties": {
        "name": _NAME, "classes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "source": {"type": ["string", "null"]}, "split": {"type": ["object", "null"]},
        "labels_sha256": {"type": "object", "additionalProperties": {"type": "string"}}}}}}

REPAIR = "run the `pipeline extract` that made it again (the same options): it re-extracts what is missing"


def is_store_meta(meta) -> bool:
    """Whether a parsed meta.json is a store's: rows per split (known splits, counts >= 0) and, with rows, a
    feature dimension."""
    return (isinstance(meta, dict) and isinstance(meta.get("rows"), dict) and set(meta["rows"]) <= set(SPLITS)
            and all(type(n) is int and n >= 0 for n in meta["rows"].values())
            and type(meta.get("dim")) is int and meta["dim"] >= 0)


def _npy_header(path: Path) -> tuple[tuple, str, int]:
    """(shape, dtype, byte offset of row 0) of a .npy file, read from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("Fortran order")
        return shape, dtype.str, f.tell()


def _array_problem(file: Path, shape: tuple, dtype: str) -> str | None:
    """What is wrong with one array file of a store, or None: missing, another dtype or shape, or a length
    that does not hold its rows (truncated, or grown)."""
    if not file.is_file():
        return f"{file.name} is missing"
    try:
        got_shape, got_dtype, offset = _npy_header(file)
    except (OSError, ValueError) as e:
        return f"{file.name} is not a readable .npy file ({str(e).splitlines()[0][:80]})"
    if got_dtype != dtype or tuple(got_shape) != shape:
        return f"{file.name} holds {got_dtype} {tuple(got_shape)}, not {dtype} {shape}"
    want = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = file.stat().st_size
    if size != want:
        return f"{file.name} is {'truncated' if size < want else 'longer than its rows'} ({size:,} of {want:,} bytes)"
    return None


def array_damage(path: Path, meta: dict) -> str | None:
    """The first array of a finished store that does not match its meta.json, said in words; None if all do."""
    for s, n in meta["rows"].items():
        for name, shape, dtype in ((f"X_{s}", (n, meta.get("dim", 0)), "<f4"), (f"y_{s}", (n,), "<i8")):
            problem = _array_problem(path / f"{name}.npy", shape, dtype)
            if problem:
                return problem
    return None


def label_damage(meta: dict, labels: dict[str, np.ndarray]) -> str | None:
    """`y_<split>.npy: ...` if a split's labels are not the ones meta.json records (sha256) or fall outside
    its classes; None if they are."""
    d = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    classes, hashes = d.get("classes"), d.get("labels_sha256")
    for s, y in labels.items():
        y = np.asarray(y)
        if isinstance(classes, list) and len(y) and (y.min() < 0 or y.max() >= len(classes)):
            i = int(np.argmax((y < 0) | (y >= len(classes))))
            return f"y_{s}.npy: label {int(y[i])} at row {i} is not a class (meta.json has {len(classes)})"
        want = hashes.get(s) if isinstance(hashes, dict) else None
        if not isinstance(want, str):
            return f"y_{s}.npy: meta.json records no sha256 of these labels (dataset.labels_sha256.{s})"
        if hashlib.sha256(y.astype("<i8").tobytes()).hexdigest() != want:
            return f"y_{s}.npy: the labels are not the ones this store was made with (sha256 differs from meta.json)"
    return None


def store_damage(path: Path, meta: dict) -> str | None:
    """What is wrong with a finished store's arrays or labels (see `load_features`), or None."""
    problem = array_damage(path, meta)
    if problem:
        return problem
    try:
        return label_damage(meta, {s: np.load(path / f"y_{s}.npy", allow_pickle=False) for s in meta["rows"]})
    except (OSError, ValueError) as e:
        return f"labels unreadable ({e})"


class StoreWriter:
    """Write one store incrementally; `state` is 'new', 'resume' or 'complete' after `open()`."""

    def __init__(self, out: str | os.PathLike, config: dict, labels: dict[str, np.ndarray], dim: int,
                 overwrite: bool = False, source: str | None = None):
        # a symlinked --out: the store goes where the link points (its .partial and lock beside the target),
        # so finishing renames one folder onto another, never onto the link
        self.out = Path(os.path.realpath(out)) if Path(out).is_symlink() else Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.config, self.hash = config, config_hash(config)
        self.labels, self.dim, self.overwrite = labels, dim, overwrite
        self.source = source  # the dataset's folder: a store of another folder's images is never replaced
        self.done = {s: 0 for s in labels}
        self.files: dict[str, tuple[int, int]] = {}  # split -> (fd, byte offset of row 0)
        self._lock = None
        self._last_commit = 0.0
        self.state = "new"
        self.note = ""  # something open() did that the user should hear about

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # keep what is synced; never let a second error hide the first
            with contextlib.suppress(OSError, PipelineError):
                self.close()
            self._release()
            return
        self.close()

    def open(self) -> str:
        if self.out.exists() and not self.out.is_dir():
            raise PipelineError(f"--out {self.out} exists and is not a folder; choose another --out")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(e, f"creating {self.out.parent}") from None
        self._acquire_lock()
        try:
            return self._open()
        except BaseException:
            self._release()
            raise

    def _open(self) -> str:
        finished = read_json(self.partial / "meta.json") if self._partial_is_ours() else None
        if finished is not None and finished.get("config_hash") == self.hash:  # killed while moving into place
            self._move_into_place()
            self.note = f"{self.out}: finished the move into place that an interrupted run had begun"
            self.state = "complete"
            return self.state
        salvage = self._check_out()
        if self.state == "complete":
            return self.state
        if self.partial.exists() and not self._partial_is_ours():
            raise PipelineError(f"{self.partial} exists and was not made by pipeline; move it away (pipeline "
                                f"keeps its unfinished work there) or choose another --out")
        self._resume_or_start(salvage)
        self._open_rows()
        return self.state

    def _check_out(self) -> dict[str, Path]:
        """What is at --out already: a finished store of these settings (state "complete"), a damaged one (the
        intact X files to keep, by split), or nothing pipeline may replace (refused in one line)."""
        if not (self.out / "meta.json").is_file():
            if self.out.is_dir() and any(self.out.iterdir()):
                raise PipelineError(f"--out {self.out} is a non-empty folder that is not a feature store; "
                                    f"choose another --out")
            return {}
        old = read_json(self.out / "meta.json")
        if old is not None and not (is_store_meta(old) and isinstance(old.get("config_hash"), str)):
            raise PipelineError(f"--out {self.out} holds a meta.json that is not a feature store's; pipeline "
                                f"will not replace it, choose another --out")
        if old is not None and old.get("config_hash") == self.hash:
            return self._salvage(old)
        self._refuse_other_source(old)
        if old is None and not self.overwrite:
            raise PipelineError(f"{self.out}/meta.json is damaged; pass --overwrite to extract into "
                                f"{self.out} again, or choose another --out")
        if not self.overwrite:
            raise PipelineError(f"{self.out} already holds features made differently ({_diff(old, self.config)}); "
                                f"pass --overwrite to replace them, or choose another --out")
        if not _only_store_files(self.out):
            raise PipelineError(f"--out {self.out} holds files a feature store does not; pipeline will not "
                                f"replace it, choose another --out")
        return {}

    def _refuse_other_source(self, old: dict | None) -> None:
        """A finished store of other images read from another folder: another dataset's work, which no flag
        replaces (--overwrite is for the same data made again)."""
        made_from = ((old or {}).get("dataset") or {}).get("source")
        if not (self.source and isinstance(made_from, str)) or old.get("config", {}).get("content_sha256") == \
                self.config.get("content_sha256"):
            return
        if os.path.realpath(made_from) != os.path.realpath(self.source):
            raise PipelineError(f"{self.out} holds the features of {made_from}, not of {self.source}; pipeline will "
                                f"not replace another dataset's store: choose another --out")

    def _salvage(self, old: dict) -> dict[str, Path]:
        """A store of these settings at --out: finished (state "complete"), or damaged: its intact X files."""
        damage = store_damage(self.out, old)
        if damage is None:
            self._tidy_finished()
            self.state = "complete"
            return {}
        if not _only_store_files(self.out):
            raise PipelineError(f"{self.out} is a damaged feature store ({damage}) and holds files a store "
                                f"does not; pipeline will not replace it, move it away")
        salvage = {s: self.out / f"X_{s}.npy" for s in self.labels if len(self.labels[s])
                   and _array_problem(self.out / f"X_{s}.npy", (len(self.labels[s]), self.dim), "<f4") is None}
        self.note = (f"{self.out} is damaged ({damage}); re-extracting "
                     + ("the rest, keeping " + ", ".join(p.name for p in salvage.values()) if salvage else "it"))
        return salvage

    def _resume_or_start(self, salvage: dict[str, Path]) -> None:
        """Resume the unfinished extraction of these settings, or start one (keeping `salvage`'s rows)."""
        progress = read_json(self.partial / "progress.json") if self.partial.is_dir() else None
        if progress is not None and not (isinstance(progress.get("config_hash"), str)
                                         and isinstance(progress.get("done"), dict)):
            progress = None  # JSON, but not a progress record: as damaged as garbage
        if progress is not None and progress["config_hash"] == self.hash and self._restore(progress):
            self.state = "resume"
            remove_stale_tmp(self.partial)
            return
        if self.partial.exists():  # our own unfinished work, of other settings or unreadable: start over
            self.note = (f"{self.partial}/progress.json was damaged; starting this extraction over"
                         if progress is None else f"discarding {self.partial} (an unfinished extraction "
                                                  f"with other settings)")
            shutil.rmtree(self.partial)
        try:
            self._create_partial()
            for split, intact in salvage.items():  # a damaged store's intact rows: copied, not recomputed
                shutil.copyfile(intact, self.partial / intact.name)
                self._salvaged(split)
            if salvage:
                self._save_progress()
        except OSError as e:
            shutil.rmtree(self.partial, ignore_errors=True)  # ours, just made, holds nothing finished
            raise io_error(e, f"creating {self.partial}") from None

    def _open_rows(self) -> None:
        try:
            for s in self.labels:  # rows are written with pwrite: no mapped pages, so memory stays flat
                fd = os.open(self.partial / f"X_{s}.npy", os.O_RDWR)
                self.files[s] = (fd, _body_offset(self.partial / f"X_{s}.npy"))
        except (OSError, ValueError) as e:
            raise PipelineError(f"{self.partial} is damaged ({e}); delete it to start over") from None

    def _partial_is_ours(self) -> bool:
        if self.partial.is_dir() and not any(self.partial.iterdir()):
            return True  # empty: killed between making it and writing the marker
        return self.partial.is_dir() and ((self.partial / MARKER).is_file() or (
            (self.partial / "progress.json").is_file() and _only_store_files(self.partial)))

    def _restore(self, progress: dict) -> bool:
        """Take the rows a progress record says are done, if it is valid for these splits."""
        done = progress["done"]
        if not (set(done) == set(self.labels) and all(
                isinstance(done[s], int) and 0 <= done[s] <= len(y) for s, y in self.labels.items())):
            return False
        self.done = done
        return True

    def _salvaged(self, split: str) -> None:
        """Every row of `split` is in place (copied from a damaged store's intact file)."""
        self.done[split] = len(self.labels[split])

    def _create_partial(self):
        self.partial.mkdir()
        (self.partial / MARKER).write_text("unfinished feature store written by pipeline extract\n")
        for s, y in self.labels.items():
            np.save(self.partial / f"y_{s}.npy", y.astype(np.int64))
            with open(self.partial / f"X_{s}.npy", "wb") as f:  # header, then a sparse body
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                         "shape": (len(y), self.dim)})
                f.truncate(f.tell() + 4 * len(y) * self.dim)
        self._save_progress()

    def _acquire_lock(self):
        self._lock = flock(self.out.with_name(f".{self.out.name}.lock"), self.out, "pipeline extract")

    def _release(self):
        for fd, _ in self.files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.files = {}
        if self._lock is not None:
            self._lock.close()  # releases the flock; the file stays (removing it would race)
            self._lock = None

    def close(self):
        try:
            if self.files and self.state != "complete":
                self.commit()
        finally:
            self._release()

    # -- writing -----------------------------------------------------------------------------------
    def write(self, split: str, start: int, rows: np.ndarray) -> None:
        """Store rows [start, start+len) of a split; they count as done once the next commit syncs them."""
        check_finite(split, start, rows)
        fd, offset = self.files[split]
        _pwrite_rows(fd, offset, self.dim, start, rows, self.partial / f"X_{split}.npy")
        self.done[split] = start + len(rows)
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Sync the rows, then record them in progress.json: what it claims is on disk."""
        try:
            for fd, _ in self.files.values():
                os.fdatasync(fd)
        except OSError as e:
            raise io_error(e, f"syncing {self.partial}") from None
        self._save_progress()
        self._last_commit = time.monotonic()
        fault_point("extract:commit")

    def _save_progress(self):
        write_json(self.partial / "progress.json", {"config_hash": self.hash, "done": self.done})

    def finalize(self, meta: dict) -> Path:
        for s, y in self.labels.items():
            if self.done[s] != len(y):
                raise AssertionError(f"finalize with {s} at {self.done[s]}/{len(y)}")
        try:
            for fd, _ in self.files.values():
                os.fsync(fd)
                os.close(fd)
        except OSError as e:
            raise io_error(e, f"syncing {self.partial}") from None
        self.files = {}
        meta = {**meta, "format_version": FORMAT_VERSION, "config": self.config, "config_hash": self.hash,
                "rows": {s: len(y) for s, y in self.labels.items()}, "dim": self.dim}
        try:
            write_json(self.partial / "meta.json", meta)  # from here on, the partial is a finished store
            fault_point("extract:finalize")
            self._move_into_place()
        except OSError as e:
            raise io_error(e, f"finishing {self.out}") from None
        return self.out

    def _move_into_place(self) -> None:
        """`<out>.partial` (holding its meta.json) becomes `<out>`; a kill anywhere in here is finished by the
        next run of the same command (see `_open`)."""
        if self.out.exists():  # an empty folder, or a store the user asked to --overwrite
            old = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.replaced-"))
            os.rename(self.out, old)  # onto the fresh empty folder: a name nobody else uses
            fault_point("extract:replace")
        os.rename(self.partial, self.out)
        fsync_dir(self.out.parent)
        self._tidy_finished()

    def _tidy_finished(self) -> None:
        """Remove what only unfinished work needs (progress, marker) and stores this one replaced."""
        for name in ("progress.json", MARKER):
            (self.out / name).unlink(missing_ok=True)
        for old in self.out.parent.glob(f".{glob.escape(self.out.name)}.replaced-*"):
            shutil.rmtree(old, ignore_errors=True)


def check_finite(split: str, start: int, rows: np.ndarray) -> None:
    if not np.isfinite(rows).all():
        raise PipelineError(f"non-finite features in {split} rows {start}..{start + len(rows)} "
                            f"(reduced-precision overflow?); rerun with --precision fp32")


def _body_offset(path: Path) -> int:
    """Byte offset of row 0 in a .npy file."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _pwrite_rows(fd: int, offset: int, dim: int, start: int, rows: np.ndarray, path: Path) -> None:
    data = memoryview(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    pos = offset + start * dim * 4
    try:
        while data:  # pwrite may write less than asked (a full disk, a signal): write the rest or fail
            n = os.pwrite(fd, data, pos)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data, pos = data[n:], pos + n
    except OSError as e:
        raise io_error(e, f"writing {path}") from None


class ShardWriter:
    """A worker's side of a sharded store: rows [start, stop) of one split written in place into the
    preallocated `X_<split>.npy` of `<out>.partial` (other workers write other rows of the same file), then
    synced. The driver, which holds the store's lock, records the shard as done only after `close()`."""

    def __init__(self, partial: str | os.PathLike, split: str, start: int, stop: int, dim: int):
        self.path = Path(partial) / f"X_{split}.npy"
        self.split, self.start, self.stop, self.dim = split, start, stop, dim
        self.next = start
        try:
            self.offset = _body_offset(self.path)
            self.fd = os.open(self.path, os.O_RDWR)
        except (OSError, ValueError) as e:
            raise PipelineError(f"{self.path} cannot be opened on this worker ({getattr(e, 'strerror', None) or e}): "
                                f"the store's --out must be on a filesystem every worker shares") from None

    def write(self, rows: np.ndarray) -> None:
        check_finite(self.split, self.next, rows)
        if self.next + len(rows) > self.stop:
            raise AssertionError(f"shard {self.split} {self.start}:{self.stop} got rows up to {self.next + len(rows)}")
        _pwrite_rows(self.fd, self.offset, self.dim, self.next, rows, self.path)
        self.next += len(rows)

    def abort(self) -> None:
        """Close without syncing: the shard failed and will be extracted again."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def close(self) -> None:
        """Sync the rows (the shard counts as done only once this returned) and close."""
        try:
            if self.next != self.stop:
                raise AssertionError(f"shard {self.split} {self.start}:{self.stop} closed at row {self.next}")
            os.fdatasync(self.fd)
        except OSError as e:
            raise io_error(e, f"syncing {self.path}") from None
        finally:
            os.close(self.fd)


class ShardedStoreWriter(StoreWriter):
    """The driver's side of a store extracted in shards by many workers (`pipeline extract --dask`).

    Progress is per shard: progress.json lists every finished shard (split, rows, and the worker, device and
    engine that made it), in any order, so a rerun extracts only the rows no finished shard covers, cut into
    shards of any size. The rows themselves are written by the workers (`ShardWriter`)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.shards: list[dict] = []

    def _restore(self, progress: dict) -> bool:
        shards = progress.get("shards")
        if not isinstance(shards, list) or not all(
                has_fields(d, {"split": str, "start": int, "stop": int}) and d["split"] in self.labels
                and 0 <= d["start"] < d["stop"] <= len(self.labels[d["split"]]) for d in shards):
            return False
        spans = sorted((d["split"], d["start"], d["stop"]) for d in shards)
        if any(a[0] == b[0] and b[1] < a[2] for a, b in zip(spans, spans[1:])):
            return False  # overlapping shards: not a record this writer made
        self.shards = shards
        self._count()
        return True

    def _salvaged(self, split: str) -> None:
        self.shards.append({"split": split, "start": 0, "stop": len(self.labels[split]), "salvaged": True})
        self._count()

    def _count(self) -> None:
        self.done = {s: sum(d["stop"] - d["start"] for d in self.shards if d["split"] == s) for s in self.labels}

    def _save_progress(self):
        write_json(self.partial / "progress.json", {"config_hash": self.hash, "done": self.done,
                                                     "shards": self.shards})

    def missing(self, shard_rows: int) -> list[tuple[str, int, int]]:
        """(split, start, stop) of the rows no finished shard covers, in pieces of at most `shard_rows`."""
        todo = []
        for s, y in self.labels.items():
            covered = sorted((d["start"], d["stop"]) for d in self.shards if d["split"] == s) + [(len(y), len(y))]
            at = 0
            for a, b in covered:
                todo += [(s, i, min(i + shard_rows, a)) for i in range(at, a, shard_rows)]
                at = max(at, b)
        return todo

    def record(self, shard: dict) -> None:
        """A worker finished (and synced) a shard: count it, durably."""
        self.shards.append(shard)
        self._count()
        self._save_progress()
        fault_point("extract:shard")

    def write(self, split, start, rows):
        raise AssertionError("a sharded store's rows are written by the workers (ShardWriter)")


def _diff(old: dict, new_config: dict) -> str:
    oc = old.get("config", {})
    keys = [k for k in sorted(set(oc) | set(new_config)) if oc.get(k) != new_config.get(k)]
    return "differs in " + ", ".join(keys) if keys else "another format version"
