"""The training processes ``innerloop reproduce`` starts, and how a stop reaches them.

A stop is SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``kill``) sent to reproduce, or one of its runs
ending by such a signal (a user stopped that ``innerloop train``). Either way reproduce passes the
signal once to every run still going, starts no new run, waits for the runs to write their
``last.pt`` and end, and then ends itself with the signal's status: running the same command again
resumes every run exactly. Without this a stopped run counted as a failed row and reproduce went on
to the next seed, and a stop sent to reproduce alone left its runs training.

Each run is started in its own session so that Ctrl-C at a terminal reaches reproduce only; it then
reaches each run exactly once (a second signal makes ``train`` abandon its iteration, see
:mod:`innerloop.experiments.stop`). A second stop to reproduce is passed on as well.
"""

from __future__ import annotations

import subprocess
import threading
from typing import Any

from innerloop.experiments.stop import NAMES, Stop, StopHandler


def stopped_by(returncode: int) -> int | None:
    """The stop signal a process ended by: ``train``'s clean-stop statuses (130, 143) or death by it."""
    for s in NAMES:
        if returncode in (128 + s, -s):
            return s
    return None


class ChildRuns(StopHandler):
    """Start runs with :meth:`run` (from any thread) inside ``with ChildRuns() as runs:``; after the
    block, :meth:`raise_if_stopped` raises :class:`Stop` if a stop came."""

    def __init__(self):
        super().__init__()
        self.signal: int | None = None
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.RLock()  # the signal handler may interrupt the main thread inside stop()

    def _handle(self, signum: int, frame) -> None:
        self.stop(signum)

    def stop(self, signum: int) -> None:
        """Start no new run and pass ``signum`` to the running ones."""
        with self._lock:
            if self.signal is None:
                self.signal = signum
            running = list(self._running)
        for p in running:
            if p.poll() is None:
                p.send_signal(signum)

    def run(self, cmd: list[str], **popen: Any) -> int | None:
        """Run ``cmd`` to its end and return its status, or None when a stop came before it started."""
        with self._lock:
            if self.signal is not None:
                return None
            p = subprocess.Popen(cmd, start_new_session=True, **popen)
            self._running.add(p)
        try:
            code = p.wait()
        finally:
            with self._lock:
                self._running.discard(p)
        s = stopped_by(code)
        if s is not None:
            self.stop(s)
        return code

    def raise_if_stopped(self) -> None:
        if self.signal is not None:
            raise Stop(self.signal, "the runs stopped at a checkpoint; the same command resumes them")
