"""The outer optimizer: a separate meta-lr for the learned optimizer, SGD momentum/Nesterov, weight
decay and the step schedule, checked against torch.optim run by hand, and exact resume with them."""

from __future__ import annotations

import pytest
import torch

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.build import build
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.train import RunInterrupted, make_optimizer, train
from test_experiments import TINY as EXPERIMENT_TINY

TINY = [*EXPERIMENT_TINY, "rule.name=meta_sgd"]


def test_rule_meta_lr_makes_a_second_group_for_the_rule_only():
    cfg = load(None, [*TINY, "train.rule_meta_lr=1e-5"])
    _, algo = build(cfg)
    opt = make_optimizer(algo, cfg.train)
    model_ids = {id(p) for p in algo.model.parameters()}
    rule_ids = {id(p) for p in algo.rule.parameters()}
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]
    assert {id(p) for p in opt.param_groups[0]["params"]} == model_ids
    assert {id(p) for p in opt.param_groups[1]["params"]} == rule_ids
    # without it: one group with every meta-parameter (earlier checkpoints load unchanged)
    cfg = load(None, TINY)
    _, algo = build(cfg)
    opt = make_optimizer(algo, cfg.train)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(algo.meta_parameters())


def test_geometry_parameters_are_in_the_rule_group():
    cfg = load(None, [*TINY, "rule.name=sgd", "geometry.name=mirror", "train.rule_meta_lr=1e-4"])
    _, algo = build(cfg)
    opt = make_optimizer(algo, cfg.train)
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in algo.geometry.parameters()}


@pytest.mark.parametrize("bad,match", [
    (["train.momentum=0.9"], "optimizer = 'sgd'"),
    (["train.optimizer=sgd", "train.nesterov=true"], "momentum > 0"),
    (["train.momentum=-1", "train.optimizer=sgd"], "train.momentum"),
])
def test_invalid_optimizer_options_are_one_clear_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        load(None, bad)


def test_training_equals_torch_optim_by_hand(tmp_path):
    """3 meta-steps of SGD (Nesterov, weight decay, step schedule, two lrs) equal the same optimizer
    written out with torch.optim on the same meta-gradients."""
    over = [*TINY, "train.iterations=3", "train.optimizer=sgd", "train.momentum=0.9", "train.nesterov=true",
            "train.weight_decay=1e-2", "train.meta_lr=0.05", "train.rule_meta_lr=0.01", "train.lr_step=2",
            "train.lr_gamma=0.5", "train.execution=loop", "train.prefetch=0", "train.dtype=float64"]
    cfg = load(None, over)
    train(cfg, tmp_path / "run", progress=False)
    got = ckpt.load_torch(tmp_path / "run" / "last.pt")["algorithm"]

    family, algo = build(cfg)
    model_ids = {id(p) for p in algo.model.parameters()}
    params = algo.meta_parameters()
    opt = torch.optim.SGD([{"params": [p for p in params if id(p) in model_ids], "lr": 0.05},
                           {"params": [p for p in params if id(p) not in model_ids], "lr": 0.01}],
                          momentum=0.9, nesterov=True, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    for it in range(3):
        if it == 2:
            for g in opt.param_groups:
                g["lr"] *= 0.5
        batch = family.sample(cfg.train.meta_batch, gen)
        batch = type(batch)(*(t.to(torch.float64) for t in batch))
        algo.zero_grad(set_to_none=True)
        algo.meta_backward(batch, "loop")
        opt.step()
    want = algo.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-12, msg=k)


def test_resume_with_momentum_and_schedule_is_exact(tmp_path):
    over = [*TINY, "train.iterations=6", "train.optimizer=sgd", "train.momentum=0.9", "train.lr_step=2",
            "train.rule_meta_lr=0.01", "train.meta_lr=0.02", "train.execution=loop"]
    cfg = load(None, over)
    train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(RunInterrupted):
        train(cfg, tmp_path / "split", progress=False, stop_at=3)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a = ckpt.load_torch(tmp_path / "straight" / "last.pt")
    b = ckpt.load_torch(tmp_path / "split" / "last.pt")
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    for k in a["algorithm"]:
        assert torch.equal(a["algorithm"][k], b["algorithm"][k]), k
