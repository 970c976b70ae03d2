"""A stop during ``innerloop reproduce``: its runs stop at a checkpoint, no new run starts, the same
command resumes. Covers a signal to one run (``INNERLOOP_FAULT`` makes the run signal itself) and a
signal to reproduce alone (the runs are in their own session, so only reproduce can pass it on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from innerloop.experiments.child_runs import stopped_by
from test_reproduce import BASE as TINY_BASE

TABLE = """
title = "tiny"
base = "base.toml"
[scale]
cpu = ["train.iterations={iterations}"]
[[row]]
name = "first"
overrides = ["rule.name=sgd"]
[[row]]
name = "second"
overrides = ["rule.name=meta_sgd"]
"""

BASE = TINY_BASE.replace("[train]\n", "[train]\ncheckpoint_every = 1\n")


def _table(tmp_path, iterations):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "tiny.toml").write_text(TABLE.format(iterations=iterations))
    return tmp_path / "tiny.toml"


def _reproduce(table, out, **kw):
    env = {k: v for k, v in os.environ.items() if k != "INNERLOOP_FAULT"}
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "innerloop", "reproduce", str(table), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300, **kw)


def test_stopped_by_reads_the_clean_stop_statuses_and_death_by_the_signal():
    assert stopped_by(143) == signal.SIGTERM and stopped_by(130) == signal.SIGINT
    assert stopped_by(-signal.SIGTERM) == signal.SIGTERM
    assert stopped_by(0) is None and stopped_by(1) is None and stopped_by(-signal.SIGKILL) is None


def test_a_run_stopped_by_sigterm_stops_reproduce_and_the_same_command_finishes(tmp_path):
    table, out = _table(tmp_path, 3), tmp_path / "res"
    r = _reproduce(table, out, env={"INNERLOOP_FAULT": "meta_step:2:TERM"})
    assert r.returncode == 143, r.stderr
    assert r.stderr.count("\n") == 1 and "SIGTERM" in r.stderr and "resumes" in r.stderr
    first = out / "tiny" / "first"
    assert (first / "last.pt").exists() and not (first / "test.json").exists()
    assert not (out / "tiny" / "second").exists()  # no new run started after the stop
    assert not (out / "tiny.json").exists()

    r = _reproduce(table, out)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "tiny.json").read_text())["rows"]
    assert [(x["name"], x["iteration"]) for x in rows] == [("first", 3), ("second", 3)]
    assert not any(x.get("failed") for x in rows)


def _wait_for(predicate, seconds=120):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_reproduce_alone_reaches_its_run_which_checkpoints(tmp_path, sig):
    table, out = _table(tmp_path, 1_000_000), tmp_path / "res"
    env = {k: v for k, v in os.environ.items() if k != "INNERLOOP_FAULT"}
    p = subprocess.Popen([sys.executable, "-m", "innerloop", "reproduce", str(table), "--out", str(out), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "tiny" / "first" / "metrics.jsonl"
    try:
        assert _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2), "the run never started"
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, err
    assert err.count("\n") == 1 and signal.Signals(sig).name in err
    log = (out / "tiny" / "first.log").read_text()
    assert signal.Signals(sig).name in log  # the run itself got the signal and said so
    assert (out / "tiny" / "first" / "last.pt").exists()
    assert not (out / "tiny" / "second").exists()
