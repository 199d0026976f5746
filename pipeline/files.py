"""Files every stage writes: atomic replacement (readers see the old file or the new one, never half), an
exclusive lock per output folder, JSON read back leniently or strictly, and the hash that names a config.

Temporary files carry `TMP_TAG` in their names, so a sweep under the folder's lock removes what a killed writer
left, and nothing else.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.faults import fault_point

TMP_TAG = ".pipeline-tmp-"  # in every temporary file pipeline writes, and in nothing else
_TMP = re.compile(r"^\..*" + re.escape(TMP_TAG) + r"[a-z0-9_]{8}\.tmp$")
_HELD: dict[str, list] = {}  # folder -> [lock file, depth]: a process may nest its own locks (run -> classify)
LOCK_NAME = ".pipeline.lock"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def slug(name: str) -> str:
    """A feature set's name as a file name: 'efficientnet_lite0 fine-tuned (last 2 blocks)' ->
    'efficientnet_lite0-fine-tuned-last-2-blocks' (names without spaces or brackets stay as they are)."""
    return re.sub(r"[^\w.:+-]+", "-", name).strip("-")


def named(path: str | os.PathLike) -> Path:
    """`path` with a name to build beside: `.`, `..` or `/` as the absolute folder they mean."""
    p = Path(path)
    return Path(os.path.abspath(p)) if p.name in ("", "..") else p


def io_error(e: OSError, what: str) -> PipelineError:
    """An OSError as one line: what failed, why, and (disk full) what to do."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PipelineError(f"{what}: {why} (disk full); free some space, then run the same command again "
                             f"to resume")
    return PipelineError(f"{what}: {why}")


def read_json(path: str | os.PathLike, kind: type = dict, strict: bool = False):
    """A JSON file's content if it parses and is a `kind`; None if it is missing. A file that is unreadable,
    damaged or of another kind is None as well, or, with `strict`, one line saying so."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        if strict:
            raise PipelineError(f"{path}: cannot read it ({e.strerror or e})") from None
        return None
    except ValueError as e:
        if strict:
            raise PipelineError(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from None
        return None
    if isinstance(obj, kind):
        return obj
    if strict:
        raise PipelineError(f"{path} does not hold a JSON {kind.__name__}; rerun the stage that writes it")
    return None


def has_fields(obj, fields: dict) -> bool:
    """Whether `obj` is a dict whose every field holds a value of the type (or tuple of types) given."""
    return isinstance(obj, dict) and all(isinstance(obj.get(k), t) for k, t in fields.items())


def check_schema(obj, schema: dict, where: str | os.PathLike, fix: str) -> None:
    """Parsed JSON checked against a JSON Schema (declarative: types, bounds, choices, required fields); the
    most relevant problem is one line naming the field, e.g. `card.json: features.size must be at most 1024
    (is 200000); rerun ...`."""
    import jsonschema  # only where a file is validated: `pipeline --help` stays light
    from jsonschema.exceptions import best_match

    err = best_match(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    if err is not None:
        raise PipelineError(f"{where}: {_schema_problem(err)}; {fix}")


def _schema_problem(err) -> str:
    """One failed schema check in words, naming its field; never the (possibly huge) value itself."""
    field = ".".join(map(str, err.absolute_path))
    v, got, kind = err.validator_value, err.instance, err.validator
    if kind == "required":
        missing = next((k for k in v if isinstance(got, dict) and k not in got), v[0])
        return f"{field + '.' if field else ''}{missing} is missing"
    name = field or "the file"
    shown = json.dumps(got)[:40] if isinstance(got, int | float | str | bool) or got is None else type(got).__name__
    words = {"type": lambda: f"must be {' or '.join(v) if isinstance(v, list) else v} (is {shown})",
             "minimum": lambda: f"must be at least {v} (is {shown})",
             "maximum": lambda: f"must be at most {v} (is {shown})",
             "exclusiveMaximum": lambda: f"must be below {v} (is {shown})",
             "enum": lambda: f"must be one of {', '.join(json.dumps(c) for c in v)} (is {shown})",
             "const": lambda: f"must be {json.dumps(v)} (is {shown})",
             "minItems": lambda: f"must hold at least {v} item(s) (holds {len(got)})",
             "minProperties": lambda: "must not be empty" if v == 1 else f"must hold at least {v} fields",
             "maxItems": lambda: f"must hold at most {v} items (holds {len(got)})",
             "minLength": lambda: "must not be empty" if v == 1 else f"must be at least {v} characters long"}
    return f"{name} {words[kind]()}" if kind in words else f"{name}: {err.message[:120]}"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# --- locks ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str):
    """Hold an exclusive lock on an output folder (`<folder>/.pipeline.lock`) while writing into it: a second
    `pipeline` process writing the same folder is refused in one line. Released by the OS even on kill -9."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io_error(e, f"locking {folder}") from None
    f = flock(folder / LOCK_NAME, folder, what)
    remove_stale_tmp(folder)
    _HELD[key] = [f, 1]
    try:
        yield
    finally:
        del _HELD[key]
        f.close()


def flock(lock_path: Path, target: Path, what: str):
    """Take `lock_path` exclusively (flock: released by the OS even on kill -9) for writing `target`, and
    write `what (pid N)` into it; a second writer is refused in one line naming the first. Returns the open
    file: closing it releases the lock."""
    try:
        f = open(lock_path, "a+")
    except OSError as e:
        raise io_error(e, f"locking {target}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise PipelineError(f"{target} is being written by {who}; wait for it to finish or choose another "
                            f"--out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{what} (pid {os.getpid()})")
    f.flush()
    return f


def remove_stale_tmp(folder: Path) -> None:
    """Temporary files of writers killed mid-write, in the folder and its sub-folders one level down (models/,
    confusion/, figures/); call only under the folder's lock: none is live. Only pipeline's tagged names."""
    for entry in folder.iterdir():
        for stale in (entry.iterdir() if entry.is_dir() and not entry.is_symlink() else [entry]):
            if _TMP.match(stale.name) and stale.is_file():
                stale.unlink(missing_ok=True)


# --- atomic writes ------------------------------------------------------------------------------------

def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut must not undo it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_to_replace(path: str | os.PathLike, overwrite: bool, option: str = "--out") -> None:
    """Before a command writes a file the user named: only a regular file is ever replaced, and only with
    --overwrite. A folder, device, FIFO, socket or link is refused whatever the flags."""
    p = Path(path)
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise PipelineError(f"{option} {p} is not a regular file (a folder, device, FIFO or link); pipeline "
                            f"replaces only files it could have written: choose another {option}")
    if p.exists() and not overwrite:
        raise PipelineError(f"{p} exists; pass --overwrite to replace it, or choose another {option}")


def _refuse_special(path: Path) -> None:
    """The last guard of every write: a device, FIFO or socket (or a folder) at `path` is never replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise io_error(e, f"writing {path}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise PipelineError(f"{path} is not a regular file (a folder, device, FIFO or socket); pipeline will not "
                            f"replace it: choose another output")


NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def _tmp_stem(name: str) -> str:
    """`name` as the start of its temporary file's name: whole, or, where the tag and the random part would
    take the name past NAME_MAX bytes, cut and told apart by a hash of the whole."""
    room = NAME_MAX - len(f".{TMP_TAG}12345678.tmp")
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    return os.fsdecode(raw[:room - 9]) + "-" + hashlib.sha256(raw).hexdigest()[:8]


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Yield an open binary file beside `path` under a unique temporary name (tagged, so a sweep finds it if
    the writer dies); when the block ends it replaces `path` in one rename, so readers see the old file or
    the new one, never half. On failure it vanishes; an OSError becomes one line. Only a regular file (or a
    link, which is replaced, not followed) is ever replaced."""
    path = Path(path)
    _refuse_special(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_tmp_stem(path.name)}{TMP_TAG}", suffix=".tmp")
    except OSError as e:
        raise io_error(e, f"writing {path}") from None
    try:
        with open(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600: give it what open() would have
        fault_point("atomic_write")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise io_error(e, f"writing {path}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def utf8(text: str) -> bytes:
    """`text` as UTF-8; the bytes of a file name that is not UTF-8 (Python's surrogate escapes, e.g. a class
    folder named in Latin-1) written as \\xNN, as figures show them, instead of failing the whole file."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate no file name made
            return text.encode("utf-8", "backslashreplace")


def atomic_write(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write `text` (UTF-8, see `utf8`) atomically (see `replacing`); `fsync` makes it durable before the rename."""
    with replacing(path) as f:
        f.write(utf8(text))
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_json(path: Path, obj) -> None:
    """JSON, indented, atomically and durably."""
    atomic_write(path, json.dumps(obj, indent=2), fsync=True)


def atomic_save(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save, atomically (see `replacing`)."""
    with replacing(path) as f:
        np.save(f, array, allow_pickle=False)
