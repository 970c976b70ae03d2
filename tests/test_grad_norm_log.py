"""metrics.jsonl's ``grad_norm_max``: the largest meta-gradient norm since the previous training row
(a spike between two rows would otherwise be invisible), kept across a stop and resume."""

from __future__ import annotations

import json

import pytest
import torch

from innerloop.experiments.build import build
from innerloop.experiments.train import RunInterrupted, train
from run_helpers import outcome, tiny


def _train_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_first_row_is_the_first_meta_gradient_norm(tmp_path):
    cfg = tiny("train.iterations=1", "train.val_every=1")
    train(cfg, tmp_path / "run", progress=False)
    family, algo = build(cfg)  # the run's initial weights and its first batch, replayed
    batch = family.sample(cfg.train.meta_batch, torch.Generator().manual_seed(cfg.train.seed))
    algo.meta_backward(batch, "loop")
    expected = torch.nn.utils.get_total_norm([p.grad for p in algo.meta_parameters() if p.grad is not None])
    (row,) = _train_rows(tmp_path / "run")
    assert row["grad_norm_max"] == pytest.approx(float(expected), rel=1e-6)


def test_a_row_holds_the_largest_norm_since_the_previous_row(tmp_path):
    every = tiny("train.iterations=6")  # log_every=1: one row per meta-step
    train(every, tmp_path / "a", progress=False)
    per_step = [r["grad_norm_max"] for r in _train_rows(tmp_path / "a")]
    assert len(per_step) == 6 and len(set(per_step)) > 1
    train(tiny("train.iterations=6", "train.log_every=3"), tmp_path / "b", progress=False)
    assert [r["grad_norm_max"] for r in _train_rows(tmp_path / "b")] == [max(per_step[:3]), max(per_step[3:])]


def test_clipping_logs_the_norm_before_clipping(tmp_path):
    train(tiny("train.iterations=2"), tmp_path / "a", progress=False)
    train(tiny("train.iterations=2", "train.clip_grad_norm=1e-6"), tmp_path / "b", progress=False)
    first = lambda out: _train_rows(out)[0]["grad_norm_max"]  # same weights at step 1, clipped or not
    assert first(tmp_path / "b") == pytest.approx(first(tmp_path / "a"), rel=1e-6) and first(tmp_path / "a") > 1e-3


def test_a_stop_between_two_rows_resumes_to_the_same_rows(tmp_path):
    cfg = tiny("train.log_every=3", "train.iterations=6", "train.checkpoint_every=1")
    train(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(RunInterrupted, match="stopped at iteration 2"):
        train(cfg, tmp_path / "cut", progress=False, stop_at=2)  # the maximum of steps 1-2 lives in last.pt
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert outcome(tmp_path / "cut") == outcome(tmp_path / "whole")
