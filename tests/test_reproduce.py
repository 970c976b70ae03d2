"""``innerloop reproduce``: rows run in their own process, finished rows are skipped."""

from __future__ import annotations

import json

import pytest

from innerloop.experiments.cli import main
from innerloop.experiments.config import ConfigError
from innerloop.experiments.reproduce import reproduce, shown_path
from innerloop.experiments.tables import read_table
from innerloop.experiments.verdict import check_claim

TABLE = """
title = "tiny"
base = "base.toml"
[scale]
cpu = ["train.iterations=2"]
paper = ["train.iterations=3"]
[[row]]
name = "sgd"
label = "SGD"
overrides = ["rule.name=sgd"]
paper = 1.5
[[row]]
name = "msgd"
overrides = ["rule.name=meta_sgd"]
"""

BASE = """
[model]
hidden = [4]
[task]
query = 5
[train]
meta_batch = 2
val_tasks = 3
[eval]
tasks = 4
"""


@pytest.fixture
def table(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "tiny.toml").write_text(TABLE)
    return tmp_path / "tiny.toml"


def test_reproduce_runs_rows_then_skips_them(table, tmp_path, capsys):
    assert main(["reproduce", str(table), "--out", str(tmp_path / "res")]) == 0
    report = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["sgd", "msgd"]
    assert all(r["tasks"] == 4 and r["iteration"] == 2 and r["train_seconds"] > 0 for r in report["rows"])
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| SGD |" in md and "| 1.5 |" in md and "train.iterations=2" in md
    again = reproduce(table, out_root=tmp_path / "res")
    assert all(r.get("skipped") for r in again["rows"])


def test_rows_left_out_are_reported_as_not_run(table, tmp_path):
    report = reproduce(table, out_root=tmp_path / "res", only=["sgd"])
    assert [r["name"] for r in report["rows"]] == ["sgd", "msgd"] and report["rows"][1]["not_run"]
    assert "| msgd | not run |" in (tmp_path / "res" / "tiny.md").read_text()


def test_bad_tables_are_user_errors(table, tmp_path):
    with pytest.raises(ConfigError, match="no scale"):
        reproduce(table, scale="huge", out_root=tmp_path / "res")
    (tmp_path / "bad.toml").write_text(TABLE.replace('name = "msgd"', 'name = "msgd"\ncolour = 1'))
    with pytest.raises(ConfigError, match="colour"):
        read_table(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(TABLE.replace("rule.name=sgd", "rule.nme=sgd"))
    with pytest.raises(ConfigError, match="rule.nme"):
        reproduce(tmp_path / "bad2.toml", out_root=tmp_path / "res")


PLOT_TABLE = """
title = "tiny with an upper bound"
base = "base.toml"
x_label = "hidden units"
[scale]
cpu = ["train.iterations=2"]
[[row]]
name = "sgd"
label = "SGD"
x = 4
series = "MAML"
[[row]]
name = "ub"
label = "upper bound"
kind = "upper_bound"
upper_bound = { train_points = 10, steps = 3, init = "sgd" }
x = 4
series = "upper bound"
"""


def test_upper_bound_rows_and_plot_coordinates(table, tmp_path):
    (tmp_path / "ub.toml").write_text(PLOT_TABLE)
    t = read_table(tmp_path / "ub.toml")
    assert [r.kind for r in t.row] == ["train", "upper_bound"] and t.row[1].upper_bound.steps == 3
    assert t.row[0].x == 4.0 and t.row[0].series == "MAML" and t.x_label == "hidden units"
    report = reproduce(tmp_path / "ub.toml", out_root=tmp_path / "res")
    sgd, ub = report["rows"]
    assert (sgd["x"], sgd["series"], sgd["iteration"]) == (4.0, "MAML", 2) and "kind" not in sgd
    assert ub["kind"] == "upper_bound" and ub["series"] == "upper bound" and ub["tasks"] == 4
    assert ub["steps"] == 3 and ub["train_points"] == 10 and ub["init"].endswith("sgd")
    stored = json.loads((tmp_path / "res" / "ub.json").read_text())
    assert stored["x_label"] == "hidden units" and stored["rows"][1]["kind"] == "upper_bound"
    assert "| upper bound | " in (tmp_path / "res" / "ub.md").read_text()
    assert reproduce(tmp_path / "ub.toml", out_root=tmp_path / "res")["rows"][1]["skipped"]
    # tables without the new keys keep their reports as before
    plain = reproduce(table, out_root=tmp_path / "res2", only=["sgd"])
    assert not {"x", "series", "kind", "x_label"} & (plain.keys() | plain["rows"][0].keys())


@pytest.mark.parametrize("change, needle", [
    (('kind = "upper_bound"\n', ""), "upper_bound options but kind = 'train'"),
    (('init = "sgd"', 'init = "nope"'), "upper_bound.init = 'nope' is not a trained row"),
    (('init = "sgd"', 'init = "ub"'), "upper_bound.init = 'ub' is not a trained row"),
    (('series = "upper bound"', 'series = "MAML"'), "same x = 4 in series 'MAML'"),
    (("x = 4\nseries = \"MAML\"", "x = nan\nseries = \"MAML\""), "x"),
    (('kind = "upper_bound"', 'kind = "eval"'), "kind"),
    (("steps = 3", "steps = 0"), "steps"),
    (("steps = 3", "step = 3"), "step"),
])
def test_bad_plot_and_upper_bound_rows(tmp_path, change, needle):
    (tmp_path / "t.toml").write_text(PLOT_TABLE.replace(*change))
    with pytest.raises(ConfigError, match="bad table file") as e:
        read_table(tmp_path / "t.toml")
    assert needle in str(e.value)


def test_reports_show_table_files_from_configs_on():
    assert shown_path("/home/u/checkout/configs/tables/alfa_table8.toml") == "configs/tables/alfa_table8.toml"
    assert shown_path("configs/tables/x.toml") == "configs/tables/x.toml"
    assert shown_path("/tmp/my_table.toml") == "/tmp/my_table.toml"


def test_seeds_train_each_row_once_per_seed_and_aggregate(table, tmp_path):
    table.write_text(TABLE.replace('base = "base.toml"', 'base = "base.toml"\nseeds = 3')
                     .replace('name = "msgd"', 'name = "msgd"\nseeds = 1'))
    report = reproduce(table, out_root=tmp_path / "res", jobs=2)
    sgd, msgd = report["rows"]
    runs = tmp_path / "res" / "tiny" / "sgd"
    seeds = [json.loads((runs / f"seed{k}" / "config.json").read_text())["train"]["seed"] for k in range(3)]
    assert seeds == [0, 1, 2] and sgd["n_seeds"] == 3 and [r["seed"] for r in sgd["runs"]] == [0, 1, 2]
    means = [json.loads((runs / f"seed{k}" / "test.json").read_text())["mean"] for k in range(3)]
    assert sgd["seed_means"] == means and sgd["mean"] == pytest.approx(sum(means) / 3)
    assert len(set(means)) == 3  # the seeds are different training runs
    assert msgd["n_seeds"] == 1 and (tmp_path / "res" / "tiny" / "msgd" / "test.json").is_file()
    assert all(len(r["val_curve"]) >= 1 for r in sgd["runs"])


def test_stale_runs_stop_reproduce_unless_set_aside_and_more_iterations_extend(table, tmp_path):
    out = tmp_path / "res"
    reproduce(table, out_root=out, only=["sgd"])
    run = out / "tiny" / "sgd"
    first = json.loads((run / "test.json").read_text())
    table.write_text(TABLE.replace('overrides = ["rule.name=sgd"]', 'overrides = ["rule.name=sgd", "rule.lr=0.02"]'))
    with pytest.raises(ConfigError, match="another config.*sgd.*rule.lr.*--restart-stale"):
        reproduce(table, out_root=out, only=["sgd"])
    assert main(["reproduce", str(table), "--out", str(out), "--rows", "sgd", "--restart-stale"]) == 0
    assert json.loads((out / "tiny" / "sgd.stale1" / "test.json").read_text()) == first  # kept, not deleted
    table.write_text(TABLE.replace('overrides = ["rule.name=sgd"]', 'overrides = ["rule.name=sgd", "rule.lr=0.02"]')
                     .replace("train.iterations=2", "train.iterations=4"))
    report = reproduce(table, out_root=out, only=["sgd"])
    assert report["rows"][0]["iterations"] == 4 and (run / "test-2-iterations.json").is_file()


def test_a_row_resumed_to_more_iterations_says_how_far_its_runs_got(table, tmp_path):
    out = tmp_path / "res"
    reproduce(table, out_root=out, only=["sgd"])
    table.write_text(TABLE.replace('cpu = ["train.iterations=2"]', 'cpu = ["train.iterations=5"]'))
    report = reproduce(table, out_root=out, collect=True)  # the 2-iteration result no longer counts
    sgd, msgd = report["rows"]
    assert sgd["not_run"] and sgd["in_progress"] == {"iterations": [2], "of": 5} and "in_progress" not in msgd
    md = (out / "tiny.md").read_text()
    assert "| SGD | not run (in progress: trained to 2 of 5 meta-steps) |" in md and "| msgd | not run |" in md
    assert check_claim({r["name"]: r for r in report["rows"]}, "sgd", "msgd") == (
        "not run", "row sgd has no result yet (trained to 2 of 5 meta-steps)")


def test_unknown_rows_are_an_error(table, tmp_path):
    assert main(["reproduce", str(table), "--out", str(tmp_path / "res"), "--rows", "nope"]) == 2
    assert not (tmp_path / "res").exists()


def test_collect_rewrites_the_report_without_training(table, tmp_path):
    out = tmp_path / "res"
    reproduce(table, out_root=out, only=["sgd"])
    table.write_text(TABLE.replace('title = "tiny"', 'title = "tiny, retitled"'))
    report = reproduce(table, out_root=out, collect=True)
    assert report["title"] == "tiny, retitled" and report["rows"][0]["iteration"] == 2
    assert report["rows"][1]["not_run"] and not (out / "tiny" / "msgd").exists()


def test_reproduce_resumes_an_interrupted_upper_bound_row(table, tmp_path, monkeypatch):
    from innerloop.experiments import upper_bound as ub_module
    from innerloop.experiments.plan import plan
    from innerloop.experiments.stop import Stop
    from innerloop.experiments.tables import row_config

    one_task_at_a_time = 'kind = "upper_bound"\noverrides = ["eval.batch=1"]'
    (tmp_path / "ub.toml").write_text(PLOT_TABLE.replace('x = 4\nseries = "upper bound"', "")
                                      .replace('kind = "upper_bound"', one_task_at_a_time))
    out = tmp_path / "res"
    reproduce(tmp_path / "ub.toml", out_root=out, only=["sgd"])
    t = read_table(tmp_path / "ub.toml")
    cfg = row_config(tmp_path / "ub.toml", t, t.row[1], "cpu")
    opts = t.row[1].upper_bound.model_copy(update={"init": str(out / "ub" / "sgd")})
    real, saved = ub_module.ckpt.save_json, []

    def save_json(obj, path):  # SIGTERM after the second task is recorded
        real(obj, path)
        if str(path).endswith(ub_module.PARTIAL):
            saved.append(path)
            if len(saved) == 2:
                raise Stop(15)

    with monkeypatch.context() as m:
        m.setattr(ub_module.ckpt, "save_json", save_json)
        with pytest.raises(Stop):
            ub_module.upper_bound(cfg, out / "ub" / "ub", opts)
    (ub_plan,) = [r for r in plan(tmp_path / "ub.toml", out_root=out) if r.unit == "tasks"]
    assert (ub_plan.row, ub_plan.state, ub_plan.iteration, ub_plan.iterations) == ("ub [tasks]", "partial", 2, 4)
    assert ub_plan.seconds_per_iteration > 0
    report = reproduce(tmp_path / "ub.toml", out_root=out)  # continues it: --resume
    assert report["rows"][1]["tasks"] == 4 and not report["rows"][1].get("failed")
    assert not (out / "ub" / "ub" / ub_module.PARTIAL).exists()
    assert "pass --resume" not in (out / "ub" / "ub.log").read_text()


def test_smoke_overrides_come_after_a_rows_own_and_shrink_upper_bounds(tmp_path):
    from innerloop.experiments.reproduce import SMOKE, _smoke_row
    from innerloop.experiments.tables import row_config

    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "ub.toml").write_text(PLOT_TABLE.replace('kind = "upper_bound"',
                                                         'kind = "upper_bound"\nscale = {cpu = ["eval.tasks=50"]}'))
    t = read_table(tmp_path / "ub.toml")
    ub = _smoke_row(t.row[1], t.scale)
    assert ub.scale["cpu"] == ["eval.tasks=50", *SMOKE] and ub.seeds == 1
    assert (ub.upper_bound.steps, ub.upper_bound.tasks, ub.upper_bound.init) == (1, 2, "sgd")
    assert row_config(tmp_path / "ub.toml", t, ub, "cpu").eval.tasks == 2
    sgd = _smoke_row(t.row[0], t.scale)
    assert sgd.upper_bound is None and sgd.scale["cpu"] == SMOKE
