"""MLPLR: information loss, the two-branch learning rate, detaching, and its trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import DT, make
from innerloop import SGD
from innerloop.algorithms import autograd_value_and_grad
from innerloop.rules.mlplr import MLPLR, information_loss


def test_information_loss_equals_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 4, dtype=DT), torch.randint(0, 4, (7,))
    ce = F.cross_entropy(logits, y)
    torch.testing.assert_close(information_loss(logits, y, ce), ce)
    torch.testing.assert_close(information_loss(logits, y, ce, "mean"), ce / 4)
    t = 0.9 * F.one_hot(y, 4).to(DT) + 0.1 / 4
    smoothed = (t * (t.log() - F.log_softmax(logits, -1))).sum(-1).mean()
    torch.testing.assert_close(information_loss(logits, y, ce, "smoothed", 0.1), smoothed)


def test_information_loss_binary_and_regression():
    torch.manual_seed(1)
    z, y = torch.randn(6, 1, dtype=DT), torch.randint(0, 2, (6,)).to(DT)
    bce = F.binary_cross_entropy_with_logits(z.squeeze(-1), y)
    torch.testing.assert_close(information_loss(z, y, bce), bce)
    out, target = torch.randn(5, 1, dtype=DT), torch.randn(5, 1, dtype=DT)
    mse = F.mse_loss(out, target)
    assert information_loss(out, target, mse) is mse


@pytest.mark.parametrize("kd,expected", [(0.3, 0.5 - 0.3), (0.5, 0.0), (0.7, 0.01)])
def test_two_branches(kd, expected):
    rule = MLPLR(0.5, 0.01)
    out, target = torch.zeros(3, 1, dtype=DT), torch.zeros(3, 1, dtype=DT)
    lam, on_min = rule.learning_rate(out, target, torch.tensor(kd, dtype=DT))
    assert lam.item() == pytest.approx(expected)
    assert on_min.item() == float(kd > 0.5)


def test_detached_mlplr_equals_sgd_with_that_step_size():
    algo, batch = make("mlplr", "maml", "linear", steps=1, rule_kwargs={"lr_max": 2.0, "lr_min": 0.05})
    task = batch.index(0)
    params = algo.params()
    out, res = algo.run_task(params, task, steps=1, first_order=False, value_and_grad=autograd_value_and_grad)
    logits = torch.func.functional_call(algo.model, params, (task.support_x,))
    kd = F.binary_cross_entropy_with_logits(logits.squeeze(-1), task.support_y)
    lam = (2.0 - kd).item() if kd <= 2.0 else 0.05
    assert res.trace["lr"][0].item() == pytest.approx(lam, rel=1e-12)
    algo.rule = SGD(lam)
    _, ref = algo.run_task(params, task, steps=1, first_order=False, value_and_grad=autograd_value_and_grad)
    for k in ref.params:
        torch.testing.assert_close(res.params[k], ref.params[k], rtol=1e-12, atol=1e-12)


def test_keeping_lambda_in_the_graph_changes_the_meta_gradient():
    grads = []
    for detach in (True, False):
        algo, batch = make("mlplr", "maml", "linear", steps=2, rule_kwargs={"lr_max": 2.0, "detach": detach})
        algo.meta_backward(batch)
        grads.append(algo.model.head.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() > 1e-8


def test_trace_reports_lambda_and_branch_share():
    algo, batch = make("mlplr", "maml", "linear", steps=3, rule_kwargs={"lr_max": 0.6, "lr_min": 0.02})
    for path in ("loop", "vmap"):
        tr = algo.evaluate(batch, path).trace
        assert tr["lr"].shape == (3, 3) and tr["lr_min_branch"].shape == (3, 3)
        on_min = tr["lr_min_branch"].bool()
        assert torch.all(tr["lr"][on_min] == 0.02) and torch.all(tr["lr"][~on_min] >= 0)


def test_lr_min_above_lr_max_is_rejected():
    with pytest.raises(ValueError, match="lr_min"):
        MLPLR(0.1, 0.2)


def test_gradcheck_through_lambda_on_the_loss_dependent_branch():
    """With λ kept in the graph and lr_max above the support loss, λ = lr_max − L_KD varies with θ0."""
    from torch.func import functional_call

    algo, batch = make("mlplr", "maml", "linear", steps=2, rule_kwargs={"lr_max": 50.0, "detach": False})
    assert algo.evaluate(batch).trace["lr_min_branch"].sum() == 0
    names = [n for n, _ in algo.named_parameters()]
    tensors = [p.detach().clone().requires_grad_() for _, p in algo.named_parameters()]
    f = lambda *ts: functional_call(algo, dict(zip(names, ts, strict=True)), (batch,)).mean()
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)
