"""Run one benchmark case in its own process (so its peak memory is its own) and read its result:
the JSON object on the last line of its stdout."""

from __future__ import annotations

import json
import subprocess


def run_child(cmd: list[str]) -> dict | str:
    """The case's result, or why it failed: its last stderr line, the signal or the exit code."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        return f"signal {-r.returncode}" if r.returncode < 0 else (err[-1] if err else f"exit {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])
