"""More points from the same synthetic task, and ``innerloop upper-bound``."""

from __future__ import annotations

import json
import math
import signal
from typing import Literal

import pytest
import torch

from innerloop import registry
from innerloop.data import LinearBinary, Sine, TaskFamily
from innerloop.data.episodes import FewShotImages
from innerloop.errors import UserError
from innerloop.experiments import upper_bound as ub_module
from innerloop.experiments.cli import main
from innerloop.experiments.components import ComponentSpec, SineConfig
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.stop import Stop
from innerloop.experiments.train import train
from innerloop.experiments.upper_bound import UpperBoundOptions, upper_bound
from test_episodes import toy_split


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


class _NoSource(Sine):
    """A user's task family that cannot draw more points of a task (the base class's default)."""

    sample_with_source = TaskFamily.sample_with_source

    def sample(self, n, generator):
        return Sine.sample_with_source(self, n, generator)[0]


class _NoSourceConfig(SineConfig):
    name: Literal["nosource"] = "nosource"


def _build_no_source(t: _NoSourceConfig) -> _NoSource:
    return _NoSource(t.k_shot, t.query, t.form)


@pytest.fixture
def no_source_family():
    """Task family "nosource" registered for one test (other tests list the registered names)."""
    registry.register("task", "nosource")(ComponentSpec("nosource", _NoSourceConfig, _build_no_source))
    yield
    registry.table("task").pop("nosource", None)


def toy_images(n_way=3, k_shot=2, query=3, per_class=9, rotate=False):
    """Images that carry their class and index in two pixels (see test_episodes.toy_split)."""
    splits = {s: toy_split(s, classes=6, per_class=per_class, seed=i) for i, s in enumerate(("train", "val", "test"))}
    return FewShotImages(splits, n_way, k_shot, query, rotate=rotate, split="test")


def ids(x):
    """(class, image index) of each image ``[N, 1, H, W]`` in [0, 1]."""
    px = (x[:, 0, 0, :2] * 255).round().long()
    return list(zip(px[:, 0].tolist(), px[:, 1].tolist(), strict=True))


def test_image_source_draws_the_same_tasks_and_other_images_of_their_classes():
    fam = toy_images()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = fam.sample(5, g1)
    t, src = fam.sample_with_source(5, g2)
    assert all(torch.equal(x, y) for x, y in zip(a, t, strict=True))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert fam.spare_per_class() == 9 - 2 - 3
    x, y = src.draw(100, torch.Generator().manual_seed(0))  # 33 per class wanted, 4 spare
    assert x.shape == (5, 3 * 4, 1, 8, 8) and y.shape == (5, 12) and y.dtype == torch.long
    assert y[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for i in range(5):
        seen = ids(t.support_x[i]) + ids(t.query_x[i])
        extra = ids(x[i])
        assert len(set(extra)) == 12 and not set(extra) & set(seen)  # distinct, and new to the task
        class_of = {lab: c for (c, _), lab in zip(ids(t.support_x[i]), t.support_y[i].tolist(), strict=True)}
        assert all(class_of[lab] == c for (c, _), lab in zip(extra, y[i].tolist(), strict=True))
        stored = torch.stack([fam.data.data[c][j] for c, j in extra]).float() / 255
        assert torch.equal(x[i], stored)
    x2, _ = src.draw(7, torch.Generator().manual_seed(0))  # 7 // 3 = 2 per class
    assert x2.shape[1] == 6
    x3, y3 = src.draw(2, torch.Generator().manual_seed(0))  # fewer than n_way: none
    assert x3.shape == (5, 0, 1, 8, 8) and y3.shape == (5, 0)
    one, _ = src[2:3].draw(100, torch.Generator().manual_seed(0))
    assert one.shape == (1, 12, 1, 8, 8)


def test_image_source_rotates_as_the_task_does():
    fam = toy_images(rotate=True, per_class=12)
    t, src = fam.fixed_tasks_with_source(6, 1)
    x, y = src.draw(30, torch.Generator().manual_seed(2))
    turned = 0
    for i in range(6):
        for lab in range(3):
            s0 = t.support_x[i][t.support_y[i] == lab][0]
            # the support image's turn: the one that maps a stored image of some class onto it
            turn = next(k for k in range(4) for c in range(6) for im in fam.data.data[c]
                        if torch.equal(torch.rot90(im.float() / 255, k, dims=(-2, -1)), s0))
            turned += turn != 0
            for e in x[i][y[i] == lab]:
                back = torch.rot90(e, -turn, dims=(-2, -1))
                c, j = ids(back[None])[0]
                assert torch.equal(back, fam.data.data[c][j].float() / 255)
    assert turned > 0


def test_image_upper_bound_fits_its_tasks_and_reports_the_extra_points():
    cfg = load("configs/glyphs_fomaml.toml", ["task.query=5", "model.channels=8", "eval.batch=2"])
    res = upper_bound(cfg, None, UpperBoundOptions(tasks=2, train_points=1000, steps=40, lr=0.01))
    spare = 20 - cfg.task.k_shot - 5  # a glyph class has 20 images
    assert res["extra_points"] == cfg.task.n_way * spare
    assert res["train_metric"] == 1.0 and res["mean"] > 1 / cfg.task.n_way


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


def test_cli_writes_test_json_and_refuses_bad_input(tmp_path, capsys, no_source_family):
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

    fail(["upper-bound", "configs/sine_maml.toml", "--out", str(tmp_path / "g"), "task.name=nosource"],
         "upper bound needs a task family that can draw more points", "'nosource'")
    fail(["upper-bound", "configs/sine_maml.toml", "--steps", "0", "--out", str(tmp_path / "z")], "--steps")
    fail(["upper-bound", "configs/sine_maml.toml", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")],
         "not a run directory")


def test_start_from_a_learned_init(tmp_path, no_source_family):
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
    with pytest.raises(UserError, match="draw more points"):
        upper_bound(load("configs/sine_maml.toml", ["task.name=nosource"]), None, UpperBoundOptions(steps=1))


# ---- interrupted and resumed -------------------------------------------------------------------
EXACT = ("metric", "mean", "ci95", "tasks", "query_loss", "train_loss", "train_metric", "extra_points")


def _stop_after_partial_writes(monkeypatch, writes):
    """Make the ``writes``-th save of the partial record be followed by SIGTERM."""
    saved = []
    real = ub_module.ckpt.save_json

    def save_json(obj, path):
        real(obj, path)
        if str(path).endswith(ub_module.PARTIAL):
            saved.append(path)
            if len(saved) == writes:
                raise Stop(signal.SIGTERM)

    monkeypatch.setattr(ub_module.ckpt, "save_json", save_json)


def test_an_interrupted_upper_bound_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    cfg = load("configs/sine_maml.toml", ["eval.batch=2", "model.hidden=[8]"])
    opts = UpperBoundOptions(tasks=6, train_points=30, steps=20)
    whole = upper_bound(cfg, tmp_path / "whole", opts)
    assert not (tmp_path / "whole" / ub_module.PARTIAL).exists()

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        _stop_after_partial_writes(m, 2)
        with pytest.raises(Stop) as e:
            upper_bound(cfg, out, opts)
    assert e.value.detail.startswith("4 of 6 tasks are kept") and "--resume continues" in e.value.detail
    assert (out / "config.json").is_file() and not (out / "test.json").exists()

    with pytest.raises(ConfigError, match=r"unfinished upper bound \(4 of 6 tasks\); pass --resume"):
        upper_bound(cfg, out, opts)
    with pytest.raises(ConfigError, match="differs.*option steps"):
        upper_bound(cfg, out, UpperBoundOptions(tasks=6, train_points=30, steps=21), resume=True)
    with pytest.raises(ConfigError, match="differs.*config model.hidden"):
        upper_bound(load("configs/sine_maml.toml", ["eval.batch=2", "model.hidden=[9]"]), out, opts, resume=True)

    trained = []
    real = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: trained.append(1) or real(*a, **k))
    resumed = upper_bound(cfg, out, opts, resume=True)
    assert len(trained) == 1  # only the last chunk of 2 tasks was trained again
    assert {k: resumed[k] for k in EXACT} == {k: whole[k] for k in EXACT}
    assert json.loads((out / "test.json").read_text())["mean"] == whole["mean"]
    assert not (out / ub_module.PARTIAL).exists()


def test_cli_says_what_an_interruption_kept_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ub"
    argv = ["upper-bound", "configs/sine_maml.toml", "--out", str(out), "--tasks", "3", "--train-points", "10",
            "--steps", "3", "--no-progress", "eval.batch=1", "model.hidden=[4]"]
    with monkeypatch.context() as m:
        _stop_after_partial_writes(m, 1)
        assert main(argv) == 143
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "interrupted by SIGTERM" in err and "1 of 3 tasks are kept" in err
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "test.json").read_text())["tasks"] == 3
    assert main(["upper-bound", "configs/sine_maml.toml", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_damaged_partial_record_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "ub"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / ub_module.PARTIAL).write_text('{"chunks": [{"sto')
    assert main(["upper-bound", "configs/sine_maml.toml", "--out", str(out), "--resume", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is damaged (JSONDecodeError); remove it" in err
    assert ub_module.partial_progress(out) == (0, None)
