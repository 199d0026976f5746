"""What every stage says while it works: the default log line, the progress bar, timed steps, the "unknown
name" refusal and the short hash that names what a cached output was made from. One home for each."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from pipeline.errors import PipelineError


def stderr(message: str) -> None:
    """The default `log`: one line on standard error (results go to standard output)."""
    from tqdm import tqdm

    shown_header()
    tqdm.write(message, file=sys.stderr)  # above a progress bar on the terminal, which is drawn again below it


_header: list = []  # a heading not shown yet: (text, log)


@contextmanager
def headed(text: str, log: Callable[[str], None]) -> Iterator[Callable[[str], None]]:
    """A heading (a stage's `== name`) shown with `log` just before the block's first line or progress bar, and
    never if the block says nothing (a skipped stage). Yields the log to use inside the block."""
    def log_under(message: str) -> None:
        shown_header()
        log(message)

    _header[:] = [(text, log)]
    try:
        yield log_under
    except BaseException:
        shown_header()  # the error (said by the caller) belongs under its stage's heading
        raise
    finally:
        _header.clear()


def shown_header() -> None:
    """Show the pending heading, if any (`headed`), once, whichever thread asks first."""
    try:
        text, log = _header.pop()
    except IndexError:
        return
    log(text)


RATE_EVERY_S = 30.0  # off a terminal: a progress line at most this often


def progress_bar(total: int | None = None, *, progress: bool | None = None, **kwargs):
    """How long work shows its progress, one convention everywhere. `progress`: True, a tqdm bar on standard
    error; False, nothing; None (not given), a bar on a terminal and `RateLines` otherwise, so logs get a
    plain line now and then, never carriage returns."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    if progress is None:
        isatty = getattr(kwargs["file"], "isatty", None)
        progress = bool(isatty and isatty()) or None
    if progress is None:
        return RateLines(total, **kwargs)  # its lines, if any, show the heading
    if progress:
        shown_header()  # before the bar that stage draws
        if _columns(kwargs["file"]):
            kwargs.setdefault("dynamic_ncols", True)
        else:  # a terminal that gives no width (some consoles, `script`): tqdm would draw a bar 0 columns wide
            kwargs.setdefault("ncols", 80)
    return tqdm(total=total, disable=not progress, **kwargs)


def _columns(file) -> int:
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class RateLines:
    """A progress bar for logs: the bar's calls (update, set_description, set_postfix, with), and a line such as
    `efficientnet_lite0 openvino fp32: 12,288/70,000 img (18%), 145.2 img/s` on standard error at most every
    RATE_EVERY_S seconds."""

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0, **_):
        self.total, self.desc, self.unit, self.n, self.postfix = total, desc or "", unit, initial, ""
        self.t0 = self.last = time.monotonic()
        self.start = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= RATE_EVERY_S:
            self.last = now
            stderr(self.line(now))

    def line(self, now: float) -> str:
        rate = (self.n - self.start) / max(now - self.t0, 1e-9)
        of = f"/{self.total:,} {self.unit} ({self.n / self.total:.0%})" if self.total else f" {self.unit}"
        return f"{self.desc + ': ' if self.desc else ''}{self.n:,}{of}, {rate:,.1f} {self.unit}/s{self.postfix}"

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
