"""Metric sinks (issue 17): metrics.csv and TensorBoard beside metrics.jsonl, wall time in every row,
and both sinks cut back to the checkpoint on a resume like metrics.jsonl."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys

import pytest

from innerloop.experiments import cli
from innerloop.experiments.sinks import CSV_COLUMNS
from innerloop.experiments.train import RunInterrupted, train
from run_helpers import cli as run_cli
from run_helpers import one_line, tiny, write_config

BOTH = 'train.log=["jsonl", "csv", "tensorboard"]'
# the optional extra innerloop[tensorboard]; `make test` installs it, so CI runs these
needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _csv(out):
    with (out / "metrics.csv").open(newline="") as f:
        return list(csv.reader(f))


def _value(text: str):
    return None if text == "" else (int(text) if text.lstrip("-").isdigit() else float(text))


def _scalars(out, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_every_row_has_the_run_clock(tmp_path):
    out = tmp_path / "run"
    train(tiny(), out, progress=False)
    rows = _rows(out)
    assert {r.get("event") for r in rows} >= {"start", "test", None}
    assert any("val" in r for r in rows)
    clock = [r["seconds"] for r in rows]  # start, training, validation and test rows alike
    assert all(isinstance(s, float) for s in clock)
    assert clock == sorted(clock) and clock[-1] > 0


def test_clock_continues_across_a_resume(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="stopped at iteration 4"):
        train(tiny(), out, progress=False, stop_at=4)
    before = max(r["seconds"] for r in _rows(out))
    train(tiny(), out, resume=True, progress=False)
    after = [r["seconds"] for r in _rows(out) if r.get("iteration", 0) > 4 or r.get("event") == "test"]
    assert after and min(after) >= before  # cumulative, not restarted at 0


def test_csv_has_one_header_and_the_jsonl_rows(tmp_path):
    out = tmp_path / "run"
    train(tiny("train.log=['csv']"), out, progress=False)
    lines = _csv(out)
    assert tuple(lines[0]) == CSV_COLUMNS
    metric_rows = [r for r in _rows(out) if "event" not in r]
    assert len(lines) - 1 == len(metric_rows)
    for line, row in zip(lines[1:], metric_rows, strict=True):
        assert len(line) == len(CSV_COLUMNS)
        got = {c: _value(v) for c, v in zip(CSV_COLUMNS, line, strict=True)}
        assert got == {c: row.get(c) for c in CSV_COLUMNS}  # floats round-trip exactly; missing keys empty
    assert any(_value(line[CSV_COLUMNS.index("val")]) is not None for line in lines[1:])
    assert not (out / "tensorboard").exists()


def test_jsonl_is_the_default_and_only_sink(tmp_path):
    out = tmp_path / "run"
    train(tiny(), out, progress=False)
    assert not (out / "metrics.csv").exists() and not (out / "tensorboard").exists()


@needs_tb
def test_killed_run_resumes_with_csv_and_tensorboard_cut_back(tmp_path):
    ref = tmp_path / "ref"
    train(tiny(BOTH), ref, progress=False)
    cfg = write_config(tmp_path / "tiny.toml")
    cfg.write_text(cfg.read_text().replace("[train]\n", '[train]\nlog = ["csv", "tensorboard"]\n'))
    out = tmp_path / "run"
    # the 7th row written (start, 1, 2, 3, val 3, 4, 5): killed after iteration 5, last.pt holds 4
    r = run_cli("train", str(cfg), "--out", str(out), "--no-progress", env={"INNERLOOP_FAULT": "log:7:KILL"})
    assert r.returncode != 0
    killed = _csv(out)
    assert max(int(line[0]) for line in killed[1:]) == 5
    assert len(_scalars(out, "train/loss")) == 5
    train(tiny(BOTH), out, resume=True, progress=False)

    def without_clock(lines):
        i = CSV_COLUMNS.index("seconds")
        return [line[:i] + line[i + 1:] for line in lines]

    assert without_clock(_csv(out)) == without_clock(_csv(ref))
    for tag in ("train/loss", "val/metric"):
        got, want = _scalars(out, tag), _scalars(ref, tag)
        assert [s for s, _ in got] == [s for s, _ in want]  # iterations 5.. not twice
        assert [v for _, v in got] == [v for _, v in want]
    loss = {r["iteration"]: r["loss"] for r in _rows(out) if "loss" in r}
    assert all(math.isclose(v, loss[s], rel_tol=1e-6) for s, v in _scalars(out, "train/loss"))
    assert [s for s, _ in _scalars(out, "test/metric")] == [8]


@needs_tb
def test_sink_added_on_resume_gets_the_earlier_rows(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="stopped at iteration 4"):
        train(tiny(), out, progress=False, stop_at=4)
    train(tiny(BOTH), out, resume=True, progress=False)  # train.log may change on resume
    assert [int(line[0]) for line in _csv(out)[1:] if line[CSV_COLUMNS.index("loss")]] == list(range(1, 9))
    assert [s for s, _ in _scalars(out, "train/loss")] == list(range(1, 9))


@needs_tb
def test_overwrite_removes_the_sinks(tmp_path):
    out = tmp_path / "run"
    train(tiny(BOTH), out, progress=False)
    train(tiny(), out, overwrite=True, progress=False)
    assert not (out / "metrics.csv").exists() and not (out / "tensorboard").exists()


def test_tensorboard_missing_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    cfg = write_config(tmp_path / "tiny.toml")
    status = cli.main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", BOTH])
    err = capsys.readouterr().err
    assert status == 2
    assert "innerloop[tensorboard]" in one_line(err)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_unknown_sink_is_a_config_error(tmp_path, capsys):
    status = cli.main(["train", str(write_config(tmp_path / "tiny.toml")), "--out", str(tmp_path / "run"),
                       "train.log=['parquet']"])
    assert status == 2 and "train.log" in one_line(capsys.readouterr().err)
