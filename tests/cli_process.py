"""`pipeline` commands in processes of their own, for the tests that kill one (SIGKILL) or hold one open.

Each command runs in a new process, as `python -m pipeline.cli ...` would, but forked from a multiprocessing
forkserver that imported torch, torchvision, scikit-learn, skops and matplotlib once: a process of its own
(its own pid, environment, working directory, stdout/stderr and exit status; killing it kills nothing else)
without paying ~8 s of imports each time. The server imports only; it never starts threads, so forking it
is safe. `run` is `subprocess.run(capture_output=True, text=True)`; `start` gives a handle to kill.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# imported once in the server: the libraries every command needs (not OpenVINO, which starts threads)
PRELOAD = ["numpy", "scipy.linalg", "torch", "torchvision", "sklearn.pipeline", "skops.io", "matplotlib.pyplot",
           "click", "pipeline.cli", "pipeline.run", "pipeline.embed.extract", "pipeline.classical.search",
           "pipeline.maps.project", "pipeline.report", "pipeline.train.loop"]

_context = None


def _ctx():
    global _context
    if _context is None:
        os.environ.setdefault("MPLBACKEND", "Agg")
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _main(args: list[str], cwd: str, env: dict, out: str, err: str) -> None:  # in the new process
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["pipeline", *args]
    # Ctrl-C as at a terminal, even where the tests themselves run with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pipeline.cli import main

    main()  # click ends with SystemExit(code): the process's exit status


class Command:
    """A started command: `.pid`, `.kill()` (SIGKILL), `.wait(timeout)` -> a CompletedProcess."""

    def __init__(self, args, cwd=None, env=None):
        self.args = [str(a) for a in args]
        self._dir = tempfile.mkdtemp(prefix="pipeline-cli-")
        self._out, self._err = Path(self._dir, "stdout"), Path(self._dir, "stderr")
        env = dict(os.environ if env is None else env)
        self._proc = _ctx().Process(target=_main, args=(self.args, str(cwd or os.getcwd()), env,
                                                        str(self._out), str(self._err)))
        self._proc.start()
        self.pid = self._proc.pid

    def kill(self) -> None:
        self._proc.kill()

    def exited(self, timeout: float) -> bool:
        """Whether the process has ended, waiting up to `timeout` seconds."""
        self._proc.join(timeout)
        return self._proc.exitcode is not None

    def stderr_so_far(self) -> str:
        return self._read(self._err)

    def wait(self, timeout: float | None = 300) -> subprocess.CompletedProcess:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            raise subprocess.TimeoutExpired(["pipeline", *self.args], timeout)
        res = subprocess.CompletedProcess(["pipeline", *self.args], self._proc.exitcode,
                                          self._read(self._out), self._read(self._err))
        self._proc.close()
        for p in (self._out, self._err):
            p.unlink(missing_ok=True)
        os.rmdir(self._dir)
        return res

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""


def start(args, cwd=None, env=None) -> Command:
    return Command(args, cwd, env)


def run(args, cwd=None, env=None, timeout: float | None = 300) -> subprocess.CompletedProcess:
    return Command(args, cwd, env).wait(timeout)
