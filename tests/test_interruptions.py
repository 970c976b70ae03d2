"""Interruptions: SIGINT, SIGTERM and kill -9 at every kind of point of a run, then ``--resume``.

Each interrupted-and-resumed run must leave metrics.jsonl and test.json bit-identical (but the
wall-clock fields) to the uninterrupted run, with one row per iteration. The signals are real: the
fault hook (:mod:`innerloop.experiments.faults`) makes the process signal itself at a chosen point,
so the kill points are exact and repeatable rather than timed.
"""

from __future__ import annotations

import random
import signal

import pytest
import torch

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments import faults
from innerloop.experiments.train import RunInterrupted, train
from run_helpers import cli, one_line, outcome, tiny, write_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny(), out, progress=False)
    return outcome(out)


@pytest.fixture(autouse=True)
def _disarmed():
    faults.disarm()
    yield
    faults.disarm()


def _interrupt(tmp_path, point: str, n: int, sig: str):
    """Train TINY in a subprocess that signals itself the n-th time it passes ``point``."""
    out = tmp_path / "run"
    r = cli("train", str(write_config(tmp_path / "tiny.toml")), "--out", str(out), "--no-progress",
            env={"INNERLOOP_FAULT": f"{point}:{n}:{sig}"})
    return out, r


def test_sigint_mid_step_saves_the_iteration_and_resumes_exactly(tmp_path, reference):
    """The known bug: Ctrl-C, then --resume, dropped the meta-batch drawn for the interrupted step."""
    out, r = _interrupt(tmp_path, "meta_step", 3, "INT")
    assert r.returncode == 130
    line = one_line(r.stderr)
    assert "SIGINT" in line and "last.pt holds iteration 3" in line
    assert ckpt.load_torch(out / "last.pt")["iteration"] == 3  # the interrupted step was finished, not dropped
    train(tiny(), out, resume=True, progress=False)
    assert outcome(out) == reference


def test_sigterm_during_validation_exits_143_and_resumes_exactly(tmp_path, reference):
    out, r = _interrupt(tmp_path, "validate", 3, "TERM")  # the second validation (iteration 6), 1st chunk of 2
    assert r.returncode == 143
    assert "SIGTERM" in one_line(r.stderr)
    assert ckpt.load_torch(out / "last.pt")["iteration"] == 6
    train(tiny(), out, resume=True, progress=False)
    assert outcome(out) == reference


def test_sigint_at_start_up_is_one_line(tmp_path, reference):
    out, r = _interrupt(tmp_path, "startup", 1, "INT")
    assert r.returncode == 130
    assert "start-up" in one_line(r.stderr)
    assert not (out / "last.pt").exists()
    train(tiny(), out, progress=False)  # nothing was written but the lock: a fresh start is allowed
    assert outcome(out) == reference


def test_sigterm_during_the_final_test_resumes_to_the_same_test(tmp_path, reference):
    out, r = _interrupt(tmp_path, "test", 2, "TERM")
    assert r.returncode == 143
    assert "final test" in one_line(r.stderr)
    assert not (out / "test.json").exists() and ckpt.load_torch(out / "last.pt")["iteration"] == 8
    train(tiny(), out, resume=True, progress=False)
    assert outcome(out) == reference


def test_kill_9_after_rows_beyond_the_checkpoint_resumes_exactly(tmp_path, reference):
    # log passes: start event, rows of iterations 1..3, validation row of 3, row of 4, row of 5: killed after it
    out, r = _interrupt(tmp_path, "log", 7, "KILL")
    assert r.returncode == -signal.SIGKILL
    assert ckpt.load_torch(out / "last.pt")["iteration"] == 4
    assert b'"iteration": 5' in (out / "metrics.jsonl").read_bytes()  # a row the resume must cut
    train(tiny(), out, resume=True, progress=False)
    assert outcome(out) == reference


def test_kill_9_during_a_checkpoint_write_leaves_a_temp_file_that_resume_removes(tmp_path, reference):
    # file writes: config.json, best.pt (it 3), last.pt (it 2), last.pt (it 4): the 4th is killed before its rename
    out, r = _interrupt(tmp_path, "file_write", 4, "KILL")
    assert r.returncode == -signal.SIGKILL
    assert list(out.glob(".last.pt.*.tmp"))  # what kill -9 leaves
    assert ckpt.load_torch(out / "last.pt")["iteration"] == 2
    train(tiny(), out, resume=True, progress=False)
    assert not list(out.glob(".*.tmp"))
    assert outcome(out) == reference


# kill points of TINY and how often each is passed in one uninterrupted run
PASSES = {"startup": 1, "meta_step": 8, "log": 13, "validate": 6, "file_write": 8, "test": 3}


def test_random_interruptions_resume_bit_identical(tmp_path, reference):
    """40 seeds, each 1-2 interruptions at a random point (SIGINT, SIGTERM, or an abrupt end as kill -9
    in-process), each followed by --resume: every run ends bit-identical to the uninterrupted one."""
    fired = 0
    for seed in range(40):
        rng = random.Random(seed)
        out = tmp_path / f"seed{seed}"
        for _ in range(rng.choice([1, 2])):
            point = rng.choice(sorted(PASSES))
            faults.arm(point, rng.randint(1, PASSES[point]), rng.choice(["INT", "TERM", "RAISE"]))
            try:
                train(tiny(), out, resume=(out / "config.json").exists(), progress=False)
            except (RunInterrupted, faults.Crash):
                fired += 1
            finally:
                faults.disarm()
        train(tiny(), out, resume=(out / "config.json").exists(), progress=False)
        assert outcome(out) == reference, (seed, point)
        assert not list(out.glob(".*.tmp"))
    assert fired >= 45  # of ~60 planned: most happened (a resumed run passes fewer points)


def test_generator_state_in_last_pt_is_the_one_after_the_last_applied_batch(tmp_path):
    """With prefetching, last.pt's generator state is that of an in-place sampler after N batches."""
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(tiny(), out, progress=False, stop_at=5)
    cfg = tiny()
    from innerloop.experiments.build import build_family

    fam, gen = build_family(cfg), torch.Generator().manual_seed(cfg.train.seed)
    for _ in range(5):
        fam.sample(cfg.train.meta_batch, gen)
    assert torch.equal(ckpt.load_torch(out / "last.pt")["generator"], gen.get_state())
