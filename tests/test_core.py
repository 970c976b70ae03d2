"""The functional core: inner loop, algorithms, execution paths, closed forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import DT, assert_paths_agree, grads_of, make
from innerloop import MAML, SGD, Euclidean, inner_loop
from innerloop.algorithms import ALGORITHMS, autograd_value_and_grad, func_value_and_grad
from innerloop.rules import RULES


def test_inner_loop_is_plain_sgd():
    torch.manual_seed(0)
    w = torch.randn(3, 2, dtype=DT)
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    fwd = lambda p, x: x @ p["w"]
    res = inner_loop(fwd, {"w": w}, x, y, rule=SGD(0.1), geometry=Euclidean(), loss_fn=F.mse_loss,
                     steps=3, first_order=True)
    ref, norms = w.clone(), []
    for _ in range(3):
        g = (2 / y.numel()) * x.T @ (x @ ref - y)
        norms.append(g.norm())
        ref = ref - 0.1 * g
    torch.testing.assert_close(res.params["w"], ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.trace["support_grad_norm"], torch.stack(norms), rtol=1e-12, atol=1e-14)
    assert res.support_losses.shape == (3,)
    assert res.support_losses[0] == F.mse_loss(x @ w, y)


@pytest.mark.parametrize("vg", [autograd_value_and_grad, func_value_and_grad])
def test_one_step_maml_closed_form_linear_regression(vg):
    """d/dw L_q(w − α ∇L_s(w)) = (I − α H_s) ∇L_q(w'), with H_s = 2/n X_sᵀX_s for mean squared error."""
    torch.manual_seed(1)
    d, ns, nq, alpha = 4, 6, 9, 0.07
    w0 = torch.randn(d, 1, dtype=DT)
    xs, ys = torch.randn(ns, d, dtype=DT), torch.randn(ns, 1, dtype=DT)
    xq, yq = torch.randn(nq, d, dtype=DT), torch.randn(nq, 1, dtype=DT)
    model = nn.Linear(d, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.copy_(w0.T)
    algo = MAML(model, SGD(alpha), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=1)
    from innerloop.types import Task

    out, _ = algo.run_task(algo.params(), Task(xs, ys, xq, yq), steps=1, first_order=False, value_and_grad=vg)
    F.mse_loss(out, yq).backward()
    gs = 2 / ns * xs.T @ (xs @ w0 - ys)
    w1 = w0 - alpha * gs
    gq = 2 / nq * xq.T @ (xq @ w1 - yq)
    hs = 2 / ns * xs.T @ xs
    expected = (torch.eye(d, dtype=DT) - alpha * hs) @ gq
    torch.testing.assert_close(model.weight.grad.T, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["sine", "linear"])
@pytest.mark.parametrize("algo_name", sorted(ALGORITHMS))
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_vmap_equals_loop(rule_name, algo_name, family):
    """Both execution paths give the same query losses and the same meta-gradients."""
    g1 = assert_paths_agree(lambda: make(rule_name, algo_name, family))
    algo, _ = make(rule_name, algo_name, family)
    if algo_name == "random_init" and not list(algo.rule.parameters()):
        assert not g1  # nothing is meta-learned (e.g. the "Random" baseline: random init + SGD)
    else:
        assert any(g.abs().sum() > 0 for g in g1.values())


def test_evaluate_paths_agree():
    algo, batch = make("meta_sgd", "maml", "sine", steps=3)
    a, b = algo.evaluate(batch, "loop"), algo.evaluate(batch, "vmap")
    torch.testing.assert_close(a.metric, b.metric, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.support_losses, b.support_losses, rtol=1e-10, atol=1e-12)
    assert a.support_losses.shape == (3, 3)


def test_fomaml_gradient_is_query_gradient_at_adapted_params():
    algo, batch = make("sgd", "fomaml", "sine", steps=2)
    algo.meta_backward(batch, "loop")
    expected = {n: torch.zeros_like(p) for n, p in algo.model.named_parameters()}
    for i in range(batch.num_tasks):
        t = batch.index(i)
        out, res = algo.run_task(algo.params(), t, steps=2, first_order=True,
                                 value_and_grad=autograd_value_and_grad)
        adapted = {k: v.detach().requires_grad_() for k, v in res.params.items()}
        from torch.func import functional_call

        loss = algo.loss_fn(functional_call(algo.model, adapted, (t.query_x,)), t.query_y)
        for k, g in zip(adapted, torch.autograd.grad(loss, list(adapted.values())), strict=True):
            expected[k] += g / batch.num_tasks
    for n, p in algo.model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-10, atol=1e-12)


def test_maml_second_order_differs_from_first_order():
    a2, batch = make("sgd", "maml", "sine", lr=0.3)
    a1, _ = make("sgd", "fomaml", "sine", lr=0.3)
    a2.meta_backward(batch)
    a1.meta_backward(batch)
    g2, g1 = grads_of(a2), grads_of(a1)
    assert max((g2[k] - g1[k]).abs().max().item() for k in g2) > 1e-6


def test_anil_adapts_only_the_head_and_trains_the_body():
    algo, batch = make("meta_sgd", "anil", "sine")
    assert all(n.startswith("head.") for n in algo.adapted_names(algo.model))
    assert set(k.replace("__", ".") for k in algo.rule.alpha.keys()) == {"head.weight", "head.bias"}
    out, res = algo.run_task(algo.params(), batch.index(0), steps=2, first_order=False,
                             value_and_grad=autograd_value_and_grad)
    assert set(res.params) == {"head.weight", "head.bias"}
    algo.meta_backward(batch)
    assert algo.model.body[0].weight.grad.abs().sum() > 0


def test_random_init_keeps_theta0_fixed():
    algo, batch = make("meta_sgd", "random_init", "sine")
    model_ids = {id(p) for p in algo.model.parameters()}
    assert not any(id(p) in model_ids for p in algo.meta_parameters())
    before = {k: v.clone() for k, v in algo.model.state_dict().items()}
    opt = torch.optim.Adam(algo.meta_parameters(), lr=0.1)
    algo.meta_backward(batch)
    opt.step()
    for k, v in algo.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in algo.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.rule.parameters())


def test_train_and_eval_step_counts_are_separate():
    algo, batch = make("sgd", "maml", "sine", steps=2)
    algo.eval_inner_steps = 5
    assert algo.evaluate(batch).support_losses.shape == (3, 5)
    assert algo.evaluate(batch, steps=1).support_losses.shape == (3, 1)


def test_unknown_path_is_an_error():
    algo, batch = make()
    with pytest.raises(ValueError, match="execution path"):
        algo.meta_backward(batch, "warp")
