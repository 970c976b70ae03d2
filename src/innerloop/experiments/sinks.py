"""Metric sinks besides ``metrics.jsonl``: a CSV file and TensorBoard event files (``train.log``).

``metrics.jsonl`` is always written and is the source of truth: a resume cuts it back to the
checkpoint, and every other sink is then brought in line with it:

* ``metrics.csv`` (``"csv"``) — one header, the same columns in every file (:data:`CSV_COLUMNS`),
  one line per training row and one per validation row, a cell left empty where a row has no
  value (``pd.read_csv`` reads it as NaN). Events (``start``, ``test``) and keys outside the header
  stay in ``metrics.jsonl`` only. On a resume the file is rewritten (atomically) from the rows of
  ``metrics.jsonl`` that were kept, so it never holds a row the resumed run repeats.
* ``tensorboard/`` (``"tensorboard"``, the optional extra ``innerloop[tensorboard]``) —
  ``torch.utils.tensorboard.SummaryWriter`` scalars ``train/loss``, ``train/metric``,
  ``train/grad_norm_max``, ``val/metric``,
  ``val/ci95`` at step ``iteration``, and ``test/metric``, ``test/ci95`` at the last iteration. On a
  resume the writer opens with ``purge_step`` one past the checkpoint, so TensorBoard drops the
  events of the iterations repeated; a run whose ``tensorboard/`` is missing gets the kept rows
  written again first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.config import ConfigError

#: what ``train.log`` may name; ``jsonl`` is always written whether named or not
SINKS = ("jsonl", "csv", "tensorboard")
CSV_NAME = "metrics.csv"
TB_DIR = "tensorboard"
#: the columns of ``metrics.csv``, in order
CSV_COLUMNS = ("iteration", "seconds", "loss", "metric", "val", "val_ci95", "best_iteration", "grad_norm_max")


def _cell(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return "" if v is None else str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def _is_metric_row(row: dict) -> bool:
    return "event" not in row and isinstance(row.get("iteration"), int)


def csv_line(row: dict) -> str:
    return ",".join(_cell(row.get(c)) for c in CSV_COLUMNS) + "\n"


class CsvSink:
    """``metrics.csv``: appended row by row, rewritten from ``metrics.jsonl`` when a run resumes."""

    def __init__(self, out: Path, kept: list[dict] | None):
        self.path = out / CSV_NAME
        # a fresh run: the header; a resume: the header and the rows metrics.jsonl kept (also when the
        # sink was added on resume)
        text = ",".join(CSV_COLUMNS) + "\n" + "".join(csv_line(r) for r in (kept or []) if _is_metric_row(r))
        ckpt._atomic(self.path, lambda f: f.write(text.encode()))

    def write(self, row: dict) -> None:
        if _is_metric_row(row):
            with self.path.open("a", encoding="utf-8") as f:
                f.write(csv_line(row))

    def close(self) -> None:
        pass


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package
        raise ConfigError("train.log names 'tensorboard' but the tensorboard package is not installed; "
                          "pip install 'innerloop[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def check_available(sinks: Iterable[str]) -> None:
    """Refuse, before any work, a sink whose optional package is missing."""
    if "tensorboard" in sinks:
        _summary_writer()


#: metrics.jsonl key -> TensorBoard tag, per kind of row
TB_TAGS = {"loss": "train/loss", "metric": "train/metric", "grad_norm_max": "train/grad_norm_max", "val": "val/metric",
           "val_ci95": "val/ci95"}


class TensorBoardSink:
    def __init__(self, out: Path, kept: list[dict] | None, resumed_at: int | None):
        writer_cls = _summary_writer()
        log_dir = out / TB_DIR
        replay = resumed_at is not None and not log_dir.exists()
        purge = None if resumed_at is None or replay else resumed_at + 1
        self.writer = writer_cls(log_dir=str(log_dir), purge_step=purge)
        self.last = resumed_at or 0
        if replay:
            for r in kept or []:
                self.write(r)

    def write(self, row: dict) -> None:
        if _is_metric_row(row):
            self.last = row["iteration"]
            for key, tag in TB_TAGS.items():
                v = row.get(key)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    self.writer.add_scalar(tag, v, global_step=row["iteration"])
        elif row.get("event") == "test":
            for key, tag in (("mean", "test/metric"), ("ci95", "test/ci95")):
                if isinstance(row.get(key), int | float):
                    self.writer.add_scalar(tag, row[key], global_step=self.last)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_sinks(names: Iterable[str], out: Path, kept: list[dict] | None, resumed_at: int | None) -> list:
    """The sinks ``names`` names (``jsonl`` aside), for run directory ``out``.

    ``kept``: the rows ``metrics.jsonl`` kept on a resume (None for a fresh run); ``resumed_at``: the
    iteration the resume continues from (None for a fresh run)."""
    sinks: list = []
    for n in dict.fromkeys(names):
        if n == "csv":
            sinks.append(CsvSink(out, kept))
        elif n == "tensorboard":
            sinks.append(TensorBoardSink(out, kept, resumed_at))
    return sinks
