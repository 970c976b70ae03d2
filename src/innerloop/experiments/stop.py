"""SIGINT (Ctrl-C) and SIGTERM (what schedulers send) during a run: stop cleanly, resume exactly.

While :class:`StopSignals` is installed, a signal received inside :meth:`StopSignals.deferred` (one
meta-iteration: step, log rows, validation, checkpoint) is remembered and the section runs to its
end; the trainer then writes ``last.pt`` for that iteration and stops. Anywhere else (start-up, the
final test), or on a second signal, :class:`Stop` is raised at once: the work in progress is
abandoned and the files on disk are those of the last completed write, from which ``--resume`` is
exact, as after kill -9.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Stop(BaseException):
    """A stop signal was received. A BaseException, like KeyboardInterrupt: no ``except Exception``
    on the way out swallows it."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum
        #: what the stop left behind, said after the signal's name (e.g. by reproduce)
        self.detail = detail

    @property
    def name(self) -> str:
        return NAMES.get(self.signum, f"signal {self.signum}")

    @property
    def status(self) -> int:
        """The shell's status for death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopHandler:
    """While entered, SIGINT and SIGTERM call :meth:`_handle`; the previous handlers come back on exit.
    Handlers can only be set from the main thread; elsewhere (a library caller's worker thread)
    signals keep their default behaviour."""

    def __init__(self):
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in NAMES:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        raise NotImplementedError


class StopSignals(StopHandler):
    def __init__(self):
        super().__init__()
        self.pending: int | None = None
        self._deferring = False

    def _handle(self, signum: int, frame) -> None:
        if self._deferring and self.pending is None:
            self.pending = signum
            return
        raise Stop(signum)

    @contextmanager
    def deferred(self):
        """Run the block to its end even if a signal comes; :attr:`pending` then names it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def check(self) -> None:
        """Raise :class:`Stop` for a signal received during a deferred block."""
        if self.pending is not None:
            raise Stop(self.pending)
