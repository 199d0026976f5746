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

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

FORMAT_VERSION = 1
SPLITS = ("train", "test")
COMMIT_SECONDS = 0.5  # at most this much finished work is redone after a crash


@dataclass
class Features:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    meta: dict

    def __iter__(self):  # X_train, y_train, X_test, y_test, meta = load_features(path)
        return iter((self.X_train, self.y_train, self.X_test, self.y_test, self.meta))


def load_features(path: str | os.PathLike, mmap: bool = True) -> Features:
    """Read a finished store; arrays are memory-mapped read-only unless `mmap=False`."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (f"; an unfinished extraction is in {partial}: rerun the same `pipeline extract` to finish it"
                if partial.exists() else "; run `pipeline extract` first")
        raise PipelineError(f"{path} is not a finished feature store (no meta.json){hint}")
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for k in ("X_train", "y_train", "X_test", "y_test")}
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: damaged feature store ({e})") from None
    for s in SPLITS:
        if len(arrays[f"X_{s}"]) != len(arrays[f"y_{s}"]) or len(arrays[f"y_{s}"]) != meta["rows"][s]:
            raise PipelineError(f"{path}: damaged feature store ({s} rows do not match meta.json)")
    return Features(meta=meta, **arrays)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def atomic_write(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write `text` through a temp file and a rename: readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2), fsync=True)


class StoreWriter:
    """Write one store incrementally; `state` is 'new', 'resume' or 'complete' after `open()`."""

    def __init__(self, out: str | os.PathLike, config: dict, labels: dict[str, np.ndarray], dim: int,
                 overwrite: bool = False):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.config, self.hash = config, config_hash(config)
        self.labels, self.dim, self.overwrite = labels, dim, overwrite
        self.done = {s: 0 for s in labels}
        self.files: dict[str, tuple[int, int]] = {}  # split -> (fd, byte offset of row 0)
        self._lock = None
        self._last_commit = 0.0
        self.state = "new"

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> str:
        if self.out.exists() and not self.out.is_dir():
            raise PipelineError(f"--out {self.out} exists and is not a folder; choose another --out")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        if (self.out / "meta.json").is_file():
            old = json.loads((self.out / "meta.json").read_text())
            if old.get("config_hash") == self.hash:
                self.state = "complete"
                return self.state
            if not self.overwrite:
                raise PipelineError(f"{self.out} already holds features made differently ({_diff(old, self.config)}); "
                                    f"pass --overwrite to replace them, or choose another --out")
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise PipelineError(f"--out {self.out} is a non-empty folder that is not a feature store; "
                                f"choose another --out")
        progress = self.partial / "progress.json"
        if progress.is_file() and json.loads(progress.read_text()).get("config_hash") == self.hash:
            self.done = json.loads(progress.read_text())["done"]
            self.state = "resume"
        else:
            if self.partial.exists():  # unfinished work of a different extraction: cannot be reused
                shutil.rmtree(self.partial)
            self.partial.mkdir()
            for s, y in self.labels.items():
                np.save(self.partial / f"y_{s}.npy", y.astype(np.int64))
                with open(self.partial / f"X_{s}.npy", "wb") as f:  # header, then a sparse body
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                             "shape": (len(y), self.dim)})
                    f.truncate(f.tell() + 4 * len(y) * self.dim)
            self._save_progress()
        for s in self.labels:  # rows are written with pwrite: no mapped pages, so memory stays flat
            fd = os.open(self.partial / f"X_{s}.npy", os.O_RDWR)
            with open(self.partial / f"X_{s}.npy", "rb") as f:
                np.lib.format.read_magic(f)
                np.lib.format.read_array_header_1_0(f)
                self.files[s] = (fd, f.tell())
        return self.state

    def _acquire_lock(self):
        lock_path = self.out.with_name(f".{self.out.name}.lock")
        self._lock = open(lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            who = self._lock.read().strip() or "another process"
            self._lock.close()
            self._lock = None
            raise PipelineError(f"{self.out} is being written by {who}; wait for it to finish "
                                f"or choose another --out") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pipeline extract (pid {os.getpid()})")
        self._lock.flush()

    def close(self):
        if self.files and self.state != "complete":
            self.commit()
        for fd, _ in self.files.values():
            os.close(fd)
        self.files = {}
        if self._lock is not None:
            self._lock.close()  # releases the flock; the file stays (removing it would race)
            self._lock = None

    # -- writing -----------------------------------------------------------------------------------
    def write(self, split: str, start: int, rows: np.ndarray) -> None:
        """Store rows [start, start+len) of a split; they count as done once the next commit syncs them."""
        if not np.isfinite(rows).all():
            raise PipelineError(f"non-finite features in {split} rows {start}..{start + len(rows)} "
                                f"(reduced-precision overflow?); rerun with --precision fp32")
        fd, offset = self.files[split]
        data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
        os.pwrite(fd, data, offset + start * self.dim * 4)
        self.done[split] = start + len(rows)
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Sync the rows, then record them in progress.json: what it claims is on disk."""
        for fd, _ in self.files.values():
            os.fdatasync(fd)
        self._save_progress()
        self._last_commit = time.monotonic()

    def _save_progress(self):
        _write_json(self.partial / "progress.json", {"config_hash": self.hash, "done": self.done})

    def finalize(self, meta: dict) -> Path:
        for s, y in self.labels.items():
            if self.done[s] != len(y):
                raise AssertionError(f"finalize with {s} at {self.done[s]}/{len(y)}")
        for fd, _ in self.files.values():
            os.fsync(fd)
            os.close(fd)
        self.files = {}
        meta = {**meta, "format_version": FORMAT_VERSION, "config": self.config, "config_hash": self.hash,
                "rows": {s: len(y) for s, y in self.labels.items()}, "dim": self.dim}
        (self.partial / "progress.json").unlink()
        _write_json(self.partial / "meta.json", meta)
        old = None
        if self.out.exists():  # an empty folder, or a store the user asked to --overwrite
            old = self.out.with_name(self.out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.rename(self.out, old)
        os.rename(self.partial, self.out)
        if old is not None:
            shutil.rmtree(old)
        return self.out


def _diff(old: dict, new_config: dict) -> str:
    oc = old.get("config", {})
    keys = [k for k in sorted(set(oc) | set(new_config)) if oc.get(k) != new_config.get(k)]
    return "differs in " + ", ".join(keys) if keys else "another format version"
