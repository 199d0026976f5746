"""Fault injection for the tests: `PIPELINE_KILL_AT=<point>[:<n>]` makes the process kill itself (SIGKILL,
as a power cut or the OOM killer would) the n-th time (default 1st) it passes `fault_point(<point>)`.

Points sit right after a piece of work is made durable (a store commit, a classifier's record, a map, the
report) and inside `atomic_write` between the temporary file and the rename. Unset, a point costs one
dictionary lookup. With `PIPELINE_KILL_ONCE=<file>` as well, only the first process to get there dies (it
creates the file; a process that finds it already made goes on): one worker of a cluster, not every restart.
"""
from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("PIPELINE_KILL_AT")
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if not nth.isdigit():
        point, nth = spec, "1"
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        once = os.environ.get("PIPELINE_KILL_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
