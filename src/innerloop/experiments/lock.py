"""One writer per run directory: an exclusive ``fcntl.flock`` on ``DIR/.lock``.

The kernel releases the lock when its holder exits, however it exits (kill -9 included), so a lock
is never left stale; the file itself stays and only names the last holder's pid for the error
message. (``flock`` is per machine: on a network file system shared by several machines it may not
exclude a writer on another machine.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from innerloop.errors import UserError

LOCK_NAME = ".lock"


class RunLocked(UserError):
    """Another process writes this run directory."""


class RunLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in run directory {self.path.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another innerloop process (pid {holder}); "
                            "wait for it to end, or stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # the file is not removed: unlinking it would let a third process lock a new inode
            # while a second one waits on the old
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
