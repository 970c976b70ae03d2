"""ALFA: the step against its formula, the generator input, the SGD init, L2F, the trace, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from helpers import DT, grads_of, make
from innerloop import SGD
from innerloop.algorithms import autograd_value_and_grad
from innerloop.params import safe_key
from innerloop.rules import RULES, BuildContext
from innerloop.rules.alfa import ALFA


class FixedGenerator(nn.Module):
    """Stands in for g_φ: returns a chosen [α¹, β¹] and records the inputs τ it was given."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out
        self.inputs: list[torch.Tensor] = []

    def forward(self, tau):
        self.inputs.append(tau.detach().clone())
        return self.out


def support_grads(algo, params, task, create_graph=False):
    forward, _, sx, _ = algo.prepare(algo.params(), task)
    p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    loss = algo.loss_fn(forward(p, sx), task.support_y)
    return dict(zip(p, torch.autograd.grad(loss, list(p.values()), create_graph=create_graph), strict=True))


def adapt(algo, task, steps):
    _, res = algo.run_task(algo.params(), task, steps=steps, first_order=False,
                           value_and_grad=autograd_value_and_grad)
    return res


def randomise_multipliers(rule, gen):
    """Distinct α⁰, β⁰ per tensor and step, so a wrong step index would show."""
    with torch.no_grad():
        for k in rule.alpha0:
            rule.alpha0[k].copy_(0.02 + 0.08 * torch.rand(rule.alpha0[k].shape, generator=gen, dtype=DT))
            rule.beta0[k].copy_(0.05 + 0.1 * torch.rand(rule.beta0[k].shape, generator=gen, dtype=DT))
            if rule.decay is not None:
                rule.decay[k].copy_(torch.rand(rule.decay[k].shape, generator=gen, dtype=DT))


@pytest.mark.parametrize("algo_name", ["maml", "random_init"])
def test_step_matches_formula_with_a_fixed_generator_output(algo_name):
    """θ_l ← (1 − β¹_l β⁰_{l,j} B_l) ⊙ θ_l − α¹_l α⁰_{l,j} g_l, with B ≡ 1 (learned init) or the
    per-element decay tensor (random init), through three steps."""
    steps = 3
    algo, batch = make("alfa", algo_name, steps=steps)
    rule = algo.rule
    assert rule.random_init == (algo_name == "random_init")
    names, n = rule.names, len(rule.names)
    gen = torch.Generator().manual_seed(3)
    randomise_multipliers(rule, gen)
    a1 = 0.5 + torch.rand(n, generator=gen, dtype=DT)
    b1 = 0.5 + torch.rand(n, generator=gen, dtype=DT)
    rule.generator = FixedGenerator(torch.cat([a1, b1]))
    task = batch.index(0)
    got = adapt(algo, task, steps)

    theta = {k: v.detach() for k, v in algo.params().items()}
    for j in range(steps):
        g = support_grads(algo, theta, task)
        # the generator saw τ = [mean θ_l] + [mean g_l] of this step
        tau = torch.stack([theta[k].mean() for k in names] + [g[k].mean() for k in names])
        torch.testing.assert_close(rule.generator.inputs[j], tau, rtol=1e-12, atol=1e-14)
        new = {}
        for i, k in enumerate(names):
            key = safe_key(k)
            b = rule.decay[key] if rule.decay is not None else 1.0
            new[k] = (1 - b1[i] * rule.beta0[key][j] * b) * theta[k] - a1[i] * rule.alpha0[key][j] * g[k]
        theta = {k: v.detach() for k, v in new.items()}
    for k in names:
        torch.testing.assert_close(got.params[k], theta[k], rtol=1e-12, atol=1e-13, msg=k)
        # the reported rate and decay of each step are α¹α⁰ and β¹β⁰
        key = safe_key(k)
        torch.testing.assert_close(got.trace[f"alpha.{k}"], a1[names.index(k)] * rule.alpha0[key][:steps].detach())
        torch.testing.assert_close(got.trace[f"beta.{k}"], b1[names.index(k)] * rule.beta0[key][:steps].detach())


def test_initial_values_and_variant_selection():
    lr = 0.05
    algo, _ = make("alfa", "maml", lr=lr, steps=4)
    rule = algo.rule
    assert rule.decay is None and not rule.random_init
    for k in rule.alpha0:
        assert rule.alpha0[k].shape == (5,) and rule.beta0[k].shape == (5,)
        assert torch.all(rule.alpha0[k] == lr) and torch.allclose(rule.beta0[k], torch.full((5,), 5e-4 * lr, dtype=DT))
    algo, _ = make("alfa", "random_init", lr=lr, steps=4)
    rule = algo.rule
    assert rule.random_init
    for name, shape in ((n, p.shape) for n, p in algo.model.named_parameters()):
        key = safe_key(name)
        assert torch.all(rule.beta0[key] == 1.0)
        assert rule.decay[key].shape == shape and torch.all(rule.decay[key] == 5e-6)
    # the config option overrides what the algorithm implies
    assert make("alfa", "maml", rule_kwargs={"random_init": True})[0].rule.random_init
    assert make("alfa", "random_init", rule_kwargs={"random_init": False})[0].rule.decay is None
    # generator: 3 linear layers 2N→2N→2N→2N with ReLU between, no output nonlinearity
    n = len(rule.names)
    mods = list(rule.generator)
    assert [type(m) for m in mods] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.weight.shape == (2 * n, 2 * n) for m in mods if isinstance(m, nn.Linear))


def test_parameters_follow_the_context_dtype():
    ctx = BuildContext({"w": torch.Size([3, 2]), "b": torch.Size([2])}, 2, torch.float32, learned_init=False)
    spec = RULES["alfa"]
    rule = spec.build(spec.config(l2f=True), ctx)
    assert {p.dtype for p in rule.parameters()} == {torch.float32}
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    u, state = rule(params, rule.init(params), params, step=0)
    assert all(v.dtype == torch.float32 for v in (*u.values(), *state))
    with pytest.raises(ValueError, match="built for 2 steps"):
        rule(params, state, params, step=3)


@pytest.mark.parametrize("detach", [True, False])
def test_generator_input_gradient_means_are_detached_by_default(detach):
    algo, batch = make("alfa", "maml", rule_kwargs={} if detach else {"detach_grad_input": False})
    rule = algo.rule
    params = {k: v.detach().clone().requires_grad_() for k, v in algo.params().items()}
    grads = {k: torch.randn_like(v).requires_grad_() for k, v in params.items()}
    a1, b1 = rule.generate(params, grads)
    out = (a1 * torch.arange(1.0, len(a1) + 1, dtype=DT)).sum() + b1.sum()
    d_theta = torch.autograd.grad(out, list(params.values()), retain_graph=True)
    assert all(d.abs().sum() > 0 for d in d_theta)  # mean(θ) stays in the graph either way
    d_g = torch.autograd.grad(out, list(grads.values()), allow_unused=True)
    if detach:
        assert all(d is None for d in d_g)
    else:
        assert all(d is not None and d.abs().sum() > 0 for d in d_g)


def meta_gradcheck(algo, batch, names):
    """float64 finite differences of the mean meta-loss (``fast_mode``: along random directions,
    fixed by the seed of :func:`make`; a wrong derivative of any input shows in a projection)."""
    tensors = [dict(algo.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    f = lambda *ts: functional_call(algo, dict(zip(names, ts, strict=True)), (batch,)).mean()
    return torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def perturb(rule):
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.02 * torch.randn_like(p))


def test_gradcheck_two_steps_with_gradient_means_in_the_graph_and_l2f():
    """With ``detach_grad_input=False`` the meta-loss is an exact function of every meta-parameter
    (θ0, generator, α⁰, β⁰, L2F attenuator): float64 finite differences through two steps."""
    algo, batch = make("alfa", "maml", steps=2, lr=0.1, hidden=(3,),
                       rule_kwargs={"detach_grad_input": False, "l2f": True})
    perturb(algo.rule)
    assert meta_gradcheck(algo, batch, [n for n, p in algo.named_parameters() if p.requires_grad])


def test_gradcheck_one_step_wrt_rule_with_detached_gradient_means():
    """By default the gradient means are detached, which cuts a path finite differences see from the
    second step on; through one step g_0 does not depend on the rule, so the check is exact."""
    algo, batch = make("alfa", "random_init", steps=1, lr=0.1, hidden=(3,))
    perturb(algo.rule)
    assert meta_gradcheck(algo, batch, [n for n, _ in algo.named_parameters() if n.startswith("rule.")])


@pytest.mark.parametrize("algo_name", ["maml", "random_init"])
def test_sgd_init_is_plain_sgd_and_every_generator_layer_learns(algo_name):
    lr = 0.05
    algo, batch = make("alfa", algo_name, steps=2, lr=lr, rule_kwargs={"generator_init": "sgd"})
    task = batch.index(0)
    got = adapt(algo, task, 2)
    rule = algo.rule
    algo.rule = SGD(lr)
    want = adapt(algo, task, 2)
    algo.rule = rule
    for k in want.params:
        torch.testing.assert_close(got.params[k], want.params[k], rtol=1e-13, atol=1e-13)
    for k in rule.names:
        assert torch.all(got.trace[f"alpha.{k}"] == lr) and torch.all(got.trace[f"beta.{k}"] == 0)

    linears = [m for m in rule.generator if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(algo.meta_parameters(), lr=1e-3)
    algo.meta_backward(batch)
    # first meta-step: the last layer learns; the earlier ones see it only through its zero weight
    assert linears[-1].weight.grad.abs().sum() > 0 and linears[-1].bias.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    algo.meta_backward(batch)
    for i, m in enumerate(linears):
        for pname, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (i, pname)


def test_l2f_attenuator_keeps_pytorchs_init_by_default_as_released():
    """baiksung/ALFA builds the attenuator as Linear-ReLU-Linear-Sigmoid with PyTorch's default init
    (no bias offset): γ starts near 0.5, not near 1. ``l2f_init="constant"`` is the opt-in start near 0.99."""
    for kind, kwargs in (("alfa", {"rule_kwargs": {"l2f": True}}), ("l2f", {"lr": 0.1})):
        algo, batch = make(kind, "maml", **kwargs)
        n = len(algo.rule.names)
        last = [m for m in algo.rule.attenuator if isinstance(m, torch.nn.Linear)][-1]
        bound = 1 / n ** 0.5  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert last.bias.abs().max() <= bound and last.weight.abs().max() <= bound
        assert last.weight.abs().max() > 0.5 * bound  # not scaled down
        theta0 = {k: v.detach() for k, v in algo.params().items()}
        gamma = algo.rule.gamma(support_grads(algo, theta0, batch.index(0))).detach()
        assert 0.2 < gamma.mean() < 0.8, gamma


def test_l2f_attenuates_theta0_per_task_and_starts_near_one():
    algo, batch = make("alfa", "maml", rule_kwargs={"l2f": True, "l2f_init": "constant"})
    rule = algo.rule
    assert rule.adjusts_init
    theta0 = {k: v.detach() for k, v in algo.params().items()}
    adjusted = []
    for i in range(batch.num_tasks):
        task = batch.index(i)
        gamma = rule.gamma(support_grads(algo, theta0, task)).detach()
        assert gamma.shape == (len(rule.names),)
        assert torch.all((gamma - 0.99).abs() < 2e-3), gamma
        # the inner loop applies it before the first step (0 steps: the adjusted θ0 itself)
        res = adapt(algo, task, 0)
        for j, k in enumerate(rule.names):
            torch.testing.assert_close(res.params[k], gamma[j] * theta0[k], rtol=1e-13, atol=1e-15)
        adjusted.append(res.params)
    assert any(not torch.equal(adjusted[0][k], adjusted[1][k]) for k in rule.names)  # per task


def test_l2f_first_order_reaches_the_attenuator_and_paths_agree():
    results = []
    for path in ("loop", "vmap"):
        algo, batch = make("alfa", "fomaml", rule_kwargs={"l2f": True})
        algo.meta_backward(batch, path)
        results.append(grads_of(algo))
    for n, _ in algo.rule.attenuator.named_parameters():
        assert results[0][f"rule.attenuator.{n}"].abs().sum() > 0, n
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-9, atol=1e-12, msg=k)


def test_reported_rates_land_in_evaluation_output():
    algo, batch = make("alfa", "maml", steps=2)
    algo.eval_inner_steps = 3
    out = algo.evaluate(batch)
    names = algo.rule.names
    assert set(out.trace) == {"support_grad_norm"} | {f"{s}.{k}" for s in ("alpha", "beta") for k in names}
    assert all(v.shape == (batch.num_tasks, 3) for v in out.trace.values())
    assert all(torch.isfinite(v).all() for v in out.trace.values())
    # per task (the generator sees task-specific gradients) and per step
    a = out.trace[f"alpha.{names[0]}"]
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0, 0], a[0, 1])
    out_v = algo.evaluate(batch, "vmap")
    for k in out.trace:
        torch.testing.assert_close(out.trace[k], out_v.trace[k], rtol=1e-10, atol=1e-13)


def test_two_layer_generator_runs():
    algo, batch = make("alfa", "maml", rule_kwargs={"generator_layers": 2})
    assert [type(m) for m in algo.rule.generator] == [nn.Linear, nn.ReLU, nn.Linear]
    stats = algo.meta_backward(batch)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.rule.generator.parameters())
    with pytest.raises(ValueError):
        RULES["alfa"].config(generator_layers=4)
    with pytest.raises(ValueError):
        ALFA({"w": torch.Size([2])}, 1, 0.1, generator_layers=4)


@pytest.mark.parametrize("state_input", ["weights", "gradients"])
def test_generator_sees_only_the_chosen_learning_state(state_input):
    """ALFA Table 5: τ holds the layer means of the weights, of the gradients, or both."""
    shapes = {"a": torch.Size([3, 2]), "b": torch.Size([3])}
    rule = ALFA(shapes, 2, 0.1, state_input=state_input, dtype=DT)
    assert rule.generator[0].in_features == 2 and rule.generator[-1].out_features == 4
    with torch.no_grad():  # every hidden unit active, so the output moves with any input
        rule.generator[0].weight.fill_(1.0)
        rule.generator[0].bias.fill_(10.0)
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen, dtype=DT) for k, s in shapes.items()}
    grads = {k: torch.randn(s, generator=gen, dtype=DT) for k, s in shapes.items()}
    other_params = {k: v + 1.0 for k, v in params.items()}
    other_grads = {k: v + 0.5 for k, v in grads.items()}
    out = torch.cat(rule.generate(params, grads))
    if state_input == "weights":
        torch.testing.assert_close(torch.cat(rule.generate(params, other_grads)), out, rtol=0, atol=0)
        assert not torch.equal(torch.cat(rule.generate(other_params, grads)), out)
    else:
        torch.testing.assert_close(torch.cat(rule.generate(other_params, grads)), out, rtol=0, atol=0)
        assert not torch.equal(torch.cat(rule.generate(params, other_grads)), out)
    algo, batch = make("alfa", "maml", rule_kwargs={"state_input": state_input})
    algo.meta_backward(batch)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.rule.generator.parameters())
    with pytest.raises(ValueError, match="state_input"):
        ALFA(shapes, 1, 0.1, state_input="both_and_more")


def test_l2f_rule_is_sgd_from_the_attenuated_init_with_alfas_attenuator():
    """MAML + L2F (ALFA Tables 1 and 2): ALFA's attenuator, then plain SGD steps."""
    algo, batch = make("l2f", "maml", lr=0.1, rule_kwargs={"init": "constant"})
    twin, _ = make("alfa", "maml", rule_kwargs={"l2f": True})
    assert [p.shape for p in algo.rule.attenuator.parameters()] == [p.shape for p in twin.rule.attenuator.parameters()]
    theta0 = {k: v.detach() for k, v in algo.params().items()}
    task = batch.index(0)
    g0 = support_grads(algo, theta0, task)
    gamma = algo.rule.gamma(g0).detach()
    assert torch.all((gamma - 0.99).abs() < 2e-3)
    start = {k: gamma[algo.rule.names.index(k)] * v for k, v in theta0.items()}
    expected = {k: v - 0.1 * g for (k, v), g in zip(start.items(), support_grads(algo, start, task).values(),
                                                     strict=True)}
    res = adapt(algo, task, 1)
    for k in expected:
        torch.testing.assert_close(res.params[k], expected[k], rtol=1e-12, atol=1e-14)
    algo.meta_backward(batch)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.rule.attenuator.parameters())
