"""``innerloop plot``: trace, inner-curves and table figures, their user errors, and a real run."""

from __future__ import annotations

import json

import pytest

from innerloop.errors import UserError
from innerloop.experiments import plot
from innerloop.experiments.cli import main
from innerloop.experiments.config import load
from innerloop.experiments.train import train

PNG = b"\x89PNG\r\n\x1a\n"
TENSORS = ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000


def fake_run(root, name, trace, *, losses=(3.0, 1.5, 0.9), kind=None, grad_norm=True):
    d = root / name
    d.mkdir(parents=True)
    steps = len(losses)
    trace = dict(trace)
    if grad_norm:
        trace["support_grad_norm"] = [10.0 / (j + 1) for j in range(steps)]
    test = {"metric": "mse", "mean": 0.5, "ci95": 0.05, "tasks": 10, "support_loss_per_step": list(losses),
            "trace": trace, "name": name, "inner_steps": steps}
    if kind:
        test["kind"] = kind
    (d / "test.json").write_text(json.dumps(test))
    (d / "config.json").write_text("{}")
    return d


def alfa_trace(steps=3):
    t = {f"alpha.{k}": [0.01 * (i + 1) * (j + 1) for j in range(steps)] for i, k in enumerate(TENSORS)}
    t.update({f"beta.{k}": [-0.1 * (i + 1) + j for j in range(steps)] for i, k in enumerate(TENSORS)})
    return t


def mlplr_trace(steps=3):
    return {"lr": [0.4 - 0.1 * j for j in range(steps)], "lr_min_branch": [0.9, 0.5, 0.1][:steps]}


def fail(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("innerloop: ")
    for n in needles:
        assert n in err, err
    return err


# ---- trace -----------------------------------------------------------------------------------
def test_trace_figures_for_alfa_and_mlplr(tmp_path, capsys):
    alfa = fake_run(tmp_path, "alfa", alfa_trace())
    mlplr = fake_run(tmp_path, "mlplr", mlplr_trace())
    assert main(["plot", "trace", str(alfa), "--out", str(tmp_path / "alfa.png")]) == 0
    assert_png(tmp_path / "alfa.png")
    assert main(["plot", "trace", str(mlplr), str(alfa), "--labels", "MLPLR", "ALFA", "--title", "both",
                 "--out", str(tmp_path / "figs" / "both.png")]) == 0
    assert_png(tmp_path / "figs" / "both.png")
    assert main(["plot", "trace", str(alfa), "--groups", "beta", "support_grad_norm",
                 "--out", str(tmp_path / "beta.png")]) == 0
    assert_png(tmp_path / "beta.png")
    assert "wrote" in capsys.readouterr().out


def test_trace_key_groups():
    assert plot.split_key("alpha.body.0.weight") == ("alpha", "body.0.weight")
    assert plot.split_key("1.scale.head.bias") == ("1.scale", "head.bias")
    assert plot.split_key("lr") == ("lr", "")
    assert plot.split_key("support_grad_norm") == ("support_grad_norm", "")


def test_trace_errors(tmp_path, capsys):
    sgd = fake_run(tmp_path, "sgd", {})
    out = str(tmp_path / "x.png")
    fail(["plot", "trace", str(sgd), "--out", out], capsys, "sgd", "no per-step values", "support_grad_norm")
    alfa = fake_run(tmp_path, "alfa", alfa_trace())
    fail(["plot", "trace", str(alfa), "--groups", "lr", "--out", out], capsys, "no lr", "alpha, beta")
    fail(["plot", "trace", str(tmp_path / "missing"), "--out", out], capsys, "no such run directory")
    fail(["plot", "trace", str(alfa), "--out", str(tmp_path / "x.pdf")], capsys, ".png")
    fail(["plot", "trace", str(alfa), "--labels", "a", "b", "--out", out], capsys, "2 labels for 1 runs")
    (tmp_path / "empty").mkdir()
    fail(["plot", "trace", str(tmp_path / "empty"), "--out", out], capsys, "neither a run directory")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    fail(["plot", "trace", str(bare), "--out", out], capsys, "no test.json", "--steps")
    assert not (tmp_path / "x.png").exists()


# ---- inner curves ------------------------------------------------------------------------------
def test_inner_curves_from_a_results_directory(tmp_path, capsys):
    table = tmp_path / "results" / "tiny"
    fake_run(table, "maml", {})
    fake_run(table, "meta_sgd", {}, losses=(3.0, 1.0, 0.5))
    fake_run(table, "ub", {}, losses=(), kind="upper_bound", grad_norm=False)  # no inner loop: left out
    (table.parent / "tiny.json").write_text(json.dumps({"rows": [
        {"name": "meta_sgd", "label": "Meta-SGD"}, {"name": "maml", "label": "MAML"}, {"name": "ub"}]}))
    runs = plot.find_runs([table])
    assert [r.label for r in runs] == ["Meta-SGD", "MAML"]
    assert [r.label for r in plot.find_runs([table / "maml"])] == ["MAML"]  # a single row keeps its label
    assert main(["plot", "inner-curves", str(table), "--out", str(tmp_path / "c.png")]) == 0
    assert_png(tmp_path / "c.png")
    assert main(["plot", "inner-curves", str(table / "maml"), "--linear-y", "--out", str(tmp_path / "d.png")]) == 0
    assert_png(tmp_path / "d.png")


def test_inner_curves_errors(tmp_path, capsys):
    old = fake_run(tmp_path, "old", {}, grad_norm=False)  # recorded before support_grad_norm existed
    out = str(tmp_path / "x.png")
    fail(["plot", "inner-curves", str(old), "--out", out], capsys, "support_grad_norm", "--steps")
    fail(["plot", "inner-curves", str(old), "--steps", "0", "--out", out], capsys, "--steps must be at least 1")
    ub = fake_run(tmp_path, "ub", {}, losses=(), kind="upper_bound", grad_norm=False)
    fail(["plot", "inner-curves", str(ub), "--out", out], capsys, "no support losses")
    fail(["plot", "inner-curves", str(ub), "--steps", "2", "--out", out], capsys, "upper-bound")
    # --steps re-evaluates from a checkpoint: a fake run has none
    fail(["plot", "inner-curves", str(old), "--steps", "2", "--out", out], capsys, "no checkpoint")


# ---- tables ----------------------------------------------------------------------------------
def table_json(path, rows, **extra):
    path.write_text(json.dumps({"title": "A table", "rows": rows, **extra}))
    return path


def row(name, mean, x=None, series=None, paper=None, **kw):
    r = {"name": name, "label": name.upper(), "paper": paper, "metric": "accuracy", "mean": mean, "ci95": 0.01,
         "tasks": 100, **kw}
    if x is not None:
        r["x"] = x
    if series is not None:
        r["series"] = series
    return r


def test_table_line_and_bar(tmp_path):
    rows = [row(f"{s}-{n}", 0.3 + 0.15 * n + (0.05 if s == "kfc" else 0), x=n, series=s.upper(), paper=0.5)
            for s in ("cnn", "kfc") for n in (4, 1, 2, 3)]
    rows.append({"name": "later", "label": "later", "paper": None, "not_run": True, "x": 5, "series": "CNN"})
    t = table_json(tmp_path / "layers.json", rows, x_label="conv layers")
    assert main(["plot", "table", str(t), "--out", str(tmp_path / "line.png"), "--paper"]) == 0
    assert_png(tmp_path / "line.png")
    assert main(["plot", "table", str(t), "--kind", "bar", "--out", str(tmp_path / "bar.png")]) == 0
    assert_png(tmp_path / "bar.png")
    # freeze-only / adapt-only bars: categories are the x values, bars per series
    bars = [row(f"{m}-{layer}", 0.9 - 0.1 * layer, x=layer, series=m) for m in ("freeze only", "adapt only")
            for layer in (1, 2, 3, 4)]
    t2 = table_json(tmp_path / "bars.json", bars)
    plot.table_figure(t2, tmp_path / "bars.png", kind="bar", paper=True)
    assert_png(tmp_path / "bars.png")
    # no x at all: bars per row label (any results table, e.g. kfo_synthetic.json)
    t3 = table_json(tmp_path / "plain.json", [row("lr", 0.58, paper=0.5), row("linnet", 0.57)])
    plot.table_figure(t3, tmp_path / "plain.png", kind="bar", paper=True)
    assert_png(tmp_path / "plain.png")
    # another numeric attribute on the x axis
    t4 = table_json(tmp_path / "time.json", [row("a", 0.5, train_seconds=10.0), row("b", 0.6, train_seconds=20.0)])
    plot.table_figure(t4, tmp_path / "time.png", x="train_seconds")
    assert_png(tmp_path / "time.png")


def test_table_errors(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    fail(["plot", "table", str(tmp_path / "nope.json"), "--out", out], capsys, "not found")
    t = table_json(tmp_path / "plain.json", [row("lr", 0.58)])
    fail(["plot", "table", str(t), "--out", out], capsys, "no row has a numeric 'x'", "--kind bar")
    t2 = table_json(tmp_path / "empty.json", [{"name": "a", "label": "a", "paper": None, "not_run": True}])
    fail(["plot", "table", str(t2), "--kind", "bar", "--out", out], capsys, "no row has a result")
    (tmp_path / "junk.json").write_text("[1, 2]")
    fail(["plot", "table", str(tmp_path / "junk.json"), "--out", out], capsys, "not a results table")
    (tmp_path / "broken.json").write_text("{")
    fail(["plot", "table", str(tmp_path / "broken.json"), "--out", out], capsys, "cannot read")
    with pytest.raises(UserError, match="--kind"):
        plot.table_figure(t, out, kind="pie")


# ---- a real run ------------------------------------------------------------------------------
TINY = ["model.hidden=[8]", "task.query=10", "train.meta_batch=2", "train.iterations=3", "train.val_every=3",
        "train.val_tasks=3", "train.checkpoint_every=100", "eval.tasks=5", "eval.batch=5"]


def test_real_run_inner_curves_with_more_steps(tmp_path, capsys):
    run = tmp_path / "maml"
    train(load("configs/sine_maml.toml", [*TINY, "name=maml"]), run, progress=False)
    curves = plot.inner_curves(plot.find_runs([run])[0], steps=3)
    assert [len(c) for c in curves] == [4, 4]  # after 0, 1, 2, 3 updates
    assert curves[0][3] < curves[0][0]  # SGD on the support set lowers its loss
    assert main(["plot", "inner-curves", str(run), "--steps", "3", "--tasks", "4",
                 "--out", str(tmp_path / "curves.png")]) == 0
    assert_png(tmp_path / "curves.png")
    assert main(["plot", "inner-curves", str(run), "--out", str(tmp_path / "stored.png")]) == 0  # from test.json
    assert_png(tmp_path / "stored.png")
    stored = json.loads((run / "test.json").read_text())
    assert stored["inner_steps"] == 1  # re-evaluation does not rewrite test.json

    alfa = tmp_path / "alfa"
    train(load("configs/sine_maml.toml", [*TINY, "name=alfa", "rule.name=alfa"]), alfa, progress=False)
    assert main(["plot", "trace", str(alfa), "--steps", "2", "--out", str(tmp_path / "alfa.png")]) == 0
    assert_png(tmp_path / "alfa.png")
    # ALFA built for 1 step has per-step multipliers for steps 0 and 1 only
    fail(["plot", "inner-curves", str(alfa), "--steps", "3", "--out", str(tmp_path / "x.png")], capsys,
         "cannot re-evaluate", "4 inner steps", "curves to 3 updates", "ALFA was built for 1 steps")
