"""A tiny sine run for the reliability and interruption tests, and what "bit-identical" compares."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from innerloop.experiments.config import load

# 8 meta-iterations: a row per iteration, validation at 3, 6, 8, last.pt every 2 iterations,
# batches prefetched by the thread (the path of the Ctrl-C bug)
TINY = [
    "name=tiny", "model.hidden=[8]", "task.query=10", "train.meta_batch=4", "train.iterations=8",
    "train.log_every=1", "train.val_every=3", "train.val_tasks=5", "train.checkpoint_every=2",
    "train.prefetch=2", "eval.tasks=7", "eval.batch=3",
]
CLOCK = re.compile(rb', "seconds": [-+0-9.eE]+')  # the one wall-clock field of metrics rows


def tiny(*extra: str):
    return load(None, [*TINY, *extra])


def write_config(path: Path) -> Path:
    """TINY as a config file, for subprocesses."""
    lines = ['name = "tiny"', "[model]", "hidden = [8]", "[task]", "query = 10", "[train]", "meta_batch = 4",
             "iterations = 8", "log_every = 1", "val_every = 3", "val_tasks = 5", "checkpoint_every = 2",
             "prefetch = 2", "[eval]", "tasks = 7", "batch = 3"]
    path.write_text("\n".join(lines) + "\n")
    return path


def outcome(out: Path) -> tuple[bytes, list]:
    """metrics.jsonl byte for byte but the wall-clock field, and test.json's items in order but the
    wall-clock and memory fields: what an interrupted and resumed run must reproduce exactly."""
    metrics = CLOCK.sub(b"", (out / "metrics.jsonl").read_bytes())
    test = json.loads((out / "test.json").read_text())
    return metrics, [(k, v) for k, v in test.items() if k not in ("train_seconds", "peak_rss_mb")]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "innerloop", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    """The single line of an error (asserting it is one line and no traceback)."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]
