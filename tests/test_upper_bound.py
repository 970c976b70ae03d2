"""More points from the same synthetic task, and ``innerloop upper-bound``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from innerloop.data import LinearBinary, Sine
from innerloop.errors import UserError
from innerloop.experiments.cli import main
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.train import train
from innerloop.experiments.upper_bound import UpperBoundOptions, upper_bound


# ---- point sources -----------------------------------------------------------------------------
@pytest.mark.parametrize("fam", [Sine(5, 7), Sine(3, 4, form="maml"), LinearBinary(20, 4, 9, balanced=False),
                                 LinearBinary(20, 4, 9, subspace=3, balanced=False)])
def test_sample_with_source_draws_the_same_tasks_from_the_same_stream(fam):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):
        a = fam.sample(6, g1)
        b, src = fam.sample_with_source(6, g2)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert torch.equal(g1.get_state(), g2.get_state())
        assert len(src) == 6
    t, src = fam.fixed_tasks_with_source(4, 9)
    assert all(torch.equal(x, y) for x, y in zip(t, fam.fixed_tasks(4, 9), strict=True))
    x, y = src.draw(11, torch.Generator().manual_seed(0))
    assert x.shape == (4, 11, *fam.input_shape) and y.shape[:2] == (4, 11)
    x1, y1 = src[1:2].draw(11, torch.Generator().manual_seed(0))
    assert x1.shape[0] == 1 and y1.shape[0] == 1


def test_alfa_sine_stream_is_unchanged():
    # the ALFA form draws A, ω, b and then every x, from one generator (recorded results depend on it)
    t = Sine(k_shot=3, query=5).sample(2, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    amp = torch.rand((2, 1, 1), generator=g) * 4.9 + 0.1
    freq = torch.rand((2, 1, 1), generator=g) * 0.4 + 0.8
    phase = torch.rand((2, 1, 1), generator=g) * math.pi
    x = torch.rand((2, 8, 1), generator=g) * 10 - 5
    assert torch.equal(torch.cat([t.support_x, t.query_x], 1), x)
    torch.testing.assert_close(torch.cat([t.support_y, t.query_y], 1), amp * torch.sin(freq * x + phase))


def test_sine_source_labels_with_the_task_parameters():
    fam = Sine(k_shot=3, query=5)
    _, src = fam.fixed_tasks_with_source(2, 3)
    g = torch.Generator().manual_seed(3)
    amp = torch.rand((2, 1, 1), generator=g) * 4.9 + 0.1
    freq = torch.rand((2, 1, 1), generator=g) * 0.4 + 0.8
    phase = torch.rand((2, 1, 1), generator=g) * math.pi
    x, y = src.draw(50, torch.Generator().manual_seed(1))
    assert x.min() >= -5 and x.max() <= 5
    torch.testing.assert_close(y, amp * torch.sin(freq * x + phase))


def test_linear_source_labels_with_the_task_vector():
    fam = LinearBinary(dim=20, support=4, query=9, balanced=False)
    _, src = fam.fixed_tasks_with_source(3, 0)
    w = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))  # the first draw is w
    x, y = src.draw(200, torch.Generator().manual_seed(1))
    assert torch.equal(((x @ w.unsqueeze(-1)).squeeze(-1) > 0).float(), y)
    assert 0.3 < y.mean() < 0.7  # unbalanced, like a query set


# ---- the upper bound ---------------------------------------------------------------------------
def test_linear_upper_bound_beats_90_percent():
    cfg = load("configs/linear_logreg.toml", ["eval.batch=3"])
    res = upper_bound(cfg, None, UpperBoundOptions(tasks=5, train_points=2000, steps=300, lr=0.05))
    assert res["metric"] == "accuracy" and res["tasks"] == 5
    assert res["mean"] > 0.9 and res["train_metric"] > 0.95


def test_sine_upper_bound_mse_near_zero():
    cfg = load("configs/sine_maml.toml")
    res = upper_bound(cfg, None, UpperBoundOptions(tasks=3, train_points=500, steps=1000, lr=0.01))
    assert res["metric"] == "mse" and res["mean"] < 0.05 and res["train_loss"] < 0.05


def test_tasks_are_trained_independently_of_batching():
    opts = UpperBoundOptions(tasks=4, train_points=50, steps=20)
    a = upper_bound(load("configs/sine_maml.toml", ["eval.batch=4"]), None, opts)
    b = upper_bound(load("configs/sine_maml.toml", ["eval.batch=1"]), None, opts)
    assert a["mean"] == pytest.approx(b["mean"], rel=1e-5)


def test_cli_writes_test_json_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "ub"
    assert main(["upper-bound", "configs/sine_maml.toml", "--out", str(out), "--tasks", "3", "--train-points", "20",
                 "--steps", "5", "--no-progress", "model.hidden=[8]"]) == 0
    res = json.loads((out / "test.json").read_text())
    assert res["kind"] == "upper_bound" and res["tasks"] == 3 and "init" not in res
    assert res["train_points"] == 20 and res["steps"] == 5
    assert {"metric", "mean", "ci95", "query_loss", "train_seconds"} <= res.keys()
    assert json.loads((out / "config.json").read_text())["model"]["hidden"] == [8]
    assert "mean ± 95% CI" in capsys.readouterr().out

    def fail(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        for n in needles:
            assert n in err, err

    fail(["upper-bound", "configs/glyphs_fomaml.toml", "--out", str(tmp_path / "g")],
         "upper bound is defined for synthetic task families")
    fail(["upper-bound", "configs/sine_maml.toml", "--steps", "0", "--out", str(tmp_path / "z")], "--steps")
    fail(["upper-bound", "configs/sine_maml.toml", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")],
         "not a run directory")


def test_start_from_a_learned_init(tmp_path):
    tiny = ["model.hidden=[8]", "task.query=10", "train.meta_batch=2", "train.iterations=2", "train.val_every=2",
            "train.val_tasks=3", "eval.tasks=3"]
    cfg = load("configs/sine_maml.toml", tiny)
    train(cfg, tmp_path / "run", progress=False)
    opts = UpperBoundOptions(train_points=10, steps=3, init=str(tmp_path / "run"))
    res = upper_bound(cfg, None, opts)
    assert res["init"] == str(tmp_path / "run") and math.isfinite(res["mean"])
    with pytest.raises(ConfigError, match="holds a training run"):
        upper_bound(cfg, tmp_path / "run", UpperBoundOptions(steps=1))
    with pytest.raises(ConfigError, match="parameters of the config's model"):
        upper_bound(load("configs/sine_maml.toml", [*tiny, "model.hidden=[4]"]), None, opts)
    with pytest.raises(UserError):
        upper_bound(load("configs/glyphs_fomaml.toml"), None, UpperBoundOptions(steps=1))
