"""Fault injection for the interruption tests: stop this process at a named point of a run.

``INNERLOOP_FAULT=POINT:N:SIGNAL`` (or :func:`arm` in-process) sends ``SIGNAL`` (INT, TERM or KILL)
to the process itself the ``N``-th time execution passes ``point(POINT)``. The points sit where an
interruption is hardest to get right: ``startup`` (after the run directory is claimed),
``meta_step`` (between the meta-gradient and the optimizer step), ``log`` (after a metrics row),
``validate`` and ``test`` (between evaluation chunks), ``file_write`` (an atomic write whose
temporary file is complete but not yet renamed). Unarmed, ``point`` is a dictionary lookup.

``SIGNAL`` may also be ``RAISE``: :class:`Crash` is raised at that point, an abrupt end in-process
(like kill -9, except that ``finally`` blocks run) for tests that cannot kill their own process.
"""

from __future__ import annotations

import os
import signal

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


class Crash(BaseException):
    """The in-process stand-in for kill -9 (a BaseException: nothing catches it on the way out)."""


_armed: dict[str, list] = {}  # point -> [passes left, signal name]


def arm(point_name: str, n: int, sig: str) -> None:
    if sig != "RAISE" and sig not in SIGNALS:
        raise ValueError(f"fault signal must be one of {', '.join([*SIGNALS, 'RAISE'])}, got {sig!r}")
    _armed.clear()
    _armed[point_name] = [n, sig]


def disarm() -> None:
    _armed.clear()


def arm_from_env() -> None:
    spec = os.environ.get("INNERLOOP_FAULT")
    if spec:
        name, n, sig = spec.split(":")
        arm(name, int(n), sig)


def point(name: str) -> None:
    plan = _armed.get(name)
    if plan is None:
        return
    plan[0] -= 1
    if plan[0] > 0:
        return
    del _armed[name]
    if plan[1] == "RAISE":
        raise Crash(f"fault injected at {name}")
    os.kill(os.getpid(), SIGNALS[plan[1]])
