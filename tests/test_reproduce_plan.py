"""``innerloop reproduce TABLE --plan``: each run's state, iterations left and time, training nothing."""

from __future__ import annotations

import shutil

from innerloop.experiments.cli import main
from innerloop.experiments.plan import plan
from innerloop.experiments.reproduce import reproduce
from test_reproduce import BASE

TABLE = """
title = "tiny"
base = "base.toml"
seeds = 2
[scale]
cpu = ["train.iterations={iterations}"]
paper = ["train.iterations=3"]
[[row]]
name = "sgd"
overrides = ["rule.name=sgd"]
[[row]]
name = "big"
scales = ["paper"]
overrides = ["rule.name=meta_sgd"]
"""



def _table(tmp_path, iterations):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "tiny.toml").write_text(TABLE.format(iterations=iterations))
    return tmp_path / "tiny.toml"


def test_plan_lists_new_done_and_extended_runs_borrows_speeds_and_trains_nothing(tmp_path, capsys):
    table, out = _table(tmp_path, 2), tmp_path / "res"
    runs = plan(table, out_root=out)
    assert [(r.row, r.seed, r.state, r.remaining) for r in runs] == [
        ("sgd", 0, "new", 2), ("sgd", 1, "new", 2), ("big", None, "scale", 0)]
    assert all(r.seconds_left is None for r in runs if r.state == "new")
    assert not out.exists()

    reproduce(table, out_root=out, only=["sgd"])
    assert [(r.state, r.iteration, r.remaining, r.seconds_left) for r in plan(table, out_root=out)][:2] == [
        ("done", 2, 0, 0.0), ("done", 2, 0, 0.0)]

    (out / "tiny" / "sgd" / "seed0" / "metrics.jsonl").unlink()  # old results keep test.json, not their log
    logless = plan(table, out_root=out)[0]
    assert (logless.state, logless.iteration) == ("done", 2)
    shutil.copy(out / "tiny" / "sgd" / "seed1" / "metrics.jsonl", out / "tiny" / "sgd" / "seed0")

    table = _table(tmp_path, 5)  # more iterations: both runs will be extended, at the speed they ran
    extended = plan(table, out_root=out)[:2]
    assert [(r.state, r.iteration, r.iterations, r.remaining) for r in extended] == [("extend", 2, 5, 3)] * 2
    assert all(r.seconds_per_iteration > 0 and r.seconds_left == 3 * r.seconds_per_iteration for r in extended)

    assert main(["reproduce", str(table), "--out", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "| sgd | 0 | extend | 2 | 5 |" in text and "runs at another scale than cpu" in text
    assert "2 run(s) to train, 6 iterations" in text
    assert (out / "tiny" / "sgd" / "seed0" / "test.json").exists()
    assert not (out / "tiny" / "sgd" / "seed0" / "test-2-iterations.json").exists()  # nothing was extended

    (out / "tiny" / "sgd" / "seed1" / "last.pt").unlink()  # a checkout without checkpoints: it trains from 0
    lost = plan(table, out_root=out, only=["sgd"])[1]
    assert (lost.state, lost.iteration, lost.remaining) == ("extend", 0, 5)
    assert lost.seconds_per_iteration > 0  # the speed still comes from its log

    shutil.rmtree(out / "tiny" / "sgd" / "seed1")  # seed 1 as if never started: it borrows seed 0's speed
    runs = plan(table, out_root=out, only=["sgd"])
    assert [r.state for r in runs] == ["extend", "new"]
    assert runs[1].seconds_per_iteration == runs[0].seconds_per_iteration


def test_plan_refuses_other_modes_and_unknown_rows(tmp_path, capsys):
    table = _table(tmp_path, 2)
    assert main(["reproduce", str(table), "--plan", "--collect", "--out", str(tmp_path / "r")]) == 2
    assert main(["reproduce", str(table), "--plan", "--rows", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "--plan trains nothing" in err and "no row named nope" in err
