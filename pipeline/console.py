"""What every stage says while it works: the default log line, the progress bar, timed steps, the "unknown
name" refusal and the short hash that names what a cached output was made from. One home for each."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pipeline.errors import PipelineError


def stderr(message: str) -> None:
    """The default `log`: one line on standard error (results go to standard output)."""
    print(message, file=sys.stderr)


def progress_bar(total: int | None = None, *, progress: bool | None = None, **kwargs):
    """A tqdm bar on standard error. `progress`: True always, False never, None (not given) only on a
    terminal (tqdm's own rule), so logs never fill with carriage returns."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, disable=(not progress) if progress is not None else None, **kwargs)


@contextmanager
def timed(seconds: dict, key: str) -> Iterator[None]:
    """`with timed(seconds, "search"): ...` stores the block's wall time, rounded to 0.1 s, in seconds[key]."""
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - t, 1)


def split_names(csv: str) -> list[str]:
    """A comma-separated list as typed: 'a, b,,c' -> ['a', 'b', 'c']."""
    return [n.strip() for n in csv.split(",") if n.strip()]


def check_names(kind: str, names: Iterable[str], choices: Iterable[str], sep: str = ", ") -> list[str]:
    """`names` as a list, or one line naming the unknown ones (or that none was given) and the choices."""
    names, choices = list(names), list(choices)
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise PipelineError(f"unknown {kind} {', '.join(unknown) or '(none given)'}; choose from "
                            f"{sep.join(choices)}")
    return names


def content_key(parts, default=None) -> str:
    """A 16-hex-digit sha256 of `parts` as JSON (sorted keys): the name of what a cached output was made from,
    compared again by the stage's `is_current`."""
    text = json.dumps(parts, sort_keys=True, default=default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
