"""The Run refactor changed no number: a short sine run and a short glyph run (loop path, fixed
seeds) reproduce, bit for bit, the metrics.jsonl rows and test.json recorded on main (c367cdd)
before the refactor. Wall-clock and memory fields are left out of the comparison.

Regenerate ``data/run_record.json`` only on purpose (a deliberate change of the numbers):
``python tests/test_run_reproduces.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from innerloop.experiments.config import load
from innerloop.experiments.train import train

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).parent / "data" / "run_record.json"
CLOCK = {"seconds", "train_seconds", "peak_rss_mb"}  # machine- and load-dependent, never compared

RUNS = {
    "sine": ("configs/sine_maml.toml", [
        "train.iterations=20", "train.val_every=10", "train.val_tasks=20", "train.log_every=5",
        "train.checkpoint_every=10", "eval.tasks=50", "train.execution=loop"]),
    "glyphs": ("configs/glyphs_fomaml.toml", [
        "train.iterations=4", "train.meta_batch=2", "train.val_every=2", "train.val_tasks=4", "train.log_every=1",
        "train.checkpoint_every=2", "eval.tasks=4", "eval.batch=4", "train.execution=loop"]),
}


def _without_clock(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in CLOCK}


def record_of(name: str, out: Path) -> dict:
    """Train run ``name`` into ``out``; its metrics rows and test summary without the clock fields."""
    config, overrides = RUNS[name]
    train(load(ROOT / config, overrides), out, progress=False)
    rows = [_without_clock(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"metrics": rows, "test": _without_clock(json.loads((out / "test.json").read_text()))}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_recorded_run_reproduces_bit_for_bit(name, tmp_path):
    want = json.loads(RECORD.read_text())[name]
    got = record_of(name, tmp_path / name)
    assert got["metrics"] == want["metrics"]  # floats compared with ==: JSON keeps every bit of a float64
    assert got["test"] == want["test"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rec = {n: record_of(n, Path(d) / n) for n in sorted(RUNS)}
    RECORD.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {RECORD}", file=sys.stderr)
