"""One conformance suite that every registered update rule must pass."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.utils._pytree import tree_flatten

from helpers import DT, make
from innerloop import SGD, Euclidean, chain, inner_loop
from innerloop.algorithms import autograd_value_and_grad, func_value_and_grad
from innerloop.rules import RULES

ALL = sorted(RULES)


def adapt(algo, task, steps, vg=autograd_value_and_grad):
    _, res = algo.run_task(algo.params(), task, steps=steps, first_order=False, value_and_grad=vg)
    return res.params


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("algo_name", ["maml", "anil"])
def test_initial_settings_reproduce_plain_sgd(name, algo_name):
    settings = RULES[name].sgd_equivalent
    if settings is None:
        pytest.skip(f"{name} never equals plain SGD by construction; its own tests pin its step")
    algo, batch = make(name, algo_name, steps=3, lr=0.05, rule_kwargs=settings)
    task = batch.index(0)
    got = adapt(algo, task, 3)
    algo.rule = SGD(0.05)
    want = adapt(algo, task, 3)
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-13, atol=1e-13, msg=k)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_meta_loss_through_two_steps(name):
    """float64 finite differences against autograd for the meta-loss w.r.t. the rule's
    meta-parameters and θ0, through two inner steps."""
    algo, batch = make(name, "maml", steps=2, lr=0.1, hidden=(3,), rule_kwargs=RULES[name].exact_gradient)
    # move the rule off its initial settings so the check is not at a special point
    with torch.no_grad():
        for p in algo.rule.parameters():
            p.add_(0.02 * torch.randn_like(p))
    names = [n for n, p in algo.named_parameters() if p.requires_grad]
    if not any(n.startswith("rule.") for n in names):
        assert not list(algo.rule.parameters())  # a rule with no meta-parameters (plain SGD)
    tensors = [dict(algo.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    f = lambda *ts: functional_call(algo, dict(zip(names, ts, strict=True)), (batch,)).mean()
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_vmap_adaptation_equals_loop(name):
    algo, batch = make(name, "maml", steps=3)
    with torch.no_grad():
        for p in algo.rule.parameters():
            p.mul_(1 + 0.1 * torch.rand_like(p))
    task = batch.index(1)
    a = adapt(algo, task, 3, autograd_value_and_grad)
    b = torch.func.vmap(lambda sx, sy, qx, qy: adapt(algo, type(task)(sx, sy, qx, qy), 3, func_value_and_grad))(
        *(t.unsqueeze(0) for t in task))
    for k in a:
        torch.testing.assert_close(a[k], b[k][0], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_first_order_still_reaches_rule_parameters(name):
    algo, batch = make(name, "fomaml", steps=2)
    algo.meta_backward(batch)
    for n, p in algo.rule.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ALL)
def test_state_structure_is_stable_across_steps(name):
    algo, batch = make(name, "maml", steps=3)
    params = algo.params()
    state = algo.rule.init(params)
    spec0 = tree_flatten(state)
    task = batch.index(0)
    for step in range(3):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        updates, state = algo.rule(grads, state, params, step=step, loss=torch.tensor(1.0, dtype=DT),
                                   logits=task.support_x, targets=task.support_y)
        assert updates.keys() == params.keys()
        assert all(updates[k].shape == params[k].shape for k in params)
        leaves, spec = tree_flatten(state)
        assert spec == spec0[1]
        assert [t.shape for t in leaves] == [t.shape for t in spec0[0]]


def test_sgd_equivalence_is_declared_for_the_rules_that_have_it():
    must = {"sgd", "meta_sgd", "lslr", "meta_curvature", "klin", "alfa"}
    assert all(RULES[n].sgd_equivalent is not None for n in must & set(RULES))


def test_every_rule_config_carries_its_name():
    for name, spec in RULES.items():
        assert spec.config().name == name


def test_chain_composes_in_order():
    torch.manual_seed(0)
    w = torch.randn(3, dtype=DT)
    x, y = torch.randn(4, 3, dtype=DT), torch.randn(4, dtype=DT)
    fwd = lambda p, x: x @ p["w"]
    from innerloop import chain

    class Negate(SGD):
        def update(self, grads, state, params, *, step, **extra):
            return {k: -g for k, g in grads.items()}, state

    res = inner_loop(fwd, {"w": w}, x, y, rule=chain(SGD(0.1), Negate(0.0)), geometry=Euclidean(),
                     loss_fn=torch.nn.functional.mse_loss, steps=1, first_order=True)
    g = 2 / 4 * x.T @ (x @ w - y)
    torch.testing.assert_close(res.params["w"], w + 0.1 * g)


@pytest.mark.parametrize("name", ALL)
def test_chain_of_one_rule_is_that_rule_bit_for_bit(name):
    """Every flag of a rule travels with it into a chain (e.g. L2F's adjusted θ0)."""
    from innerloop import chain

    kwargs = {"l2f": True} if name == "alfa" else {}
    algo, batch = make(name, "maml", steps=2, rule_kwargs=kwargs)
    rule = algo.rule
    task = batch.index(0)
    want = adapt(algo, task, 2)
    algo.zero_grad(set_to_none=True)
    algo.meta_backward(batch)
    want_grads = {n: p.grad.clone() for n, p in rule.named_parameters() if p.grad is not None}
    algo.rule = chain(rule)
    assert algo.rule.adjusts_init == rule.adjusts_init
    assert algo.rule.supports_checkpoint == rule.supports_checkpoint
    got = adapt(algo, task, 2)
    assert all(torch.equal(got[k], want[k]) for k in want)
    algo.zero_grad(set_to_none=True)
    algo.meta_backward(batch)
    got_grads = {n: p.grad for n, p in rule.named_parameters() if p.grad is not None}
    assert got_grads.keys() == want_grads.keys()
    assert all(torch.equal(got_grads[n], want_grads[n]) for n in want_grads)


def test_chain_in_a_config_builds_its_rules_in_order():
    from innerloop.experiments.build import build
    from innerloop.experiments.config import ConfigError, load, to_dict, validate

    cfg = load(None, ['rule={name = "chain", rules = [{name = "mlplr", lr_max = 2.0}, {name = "meta_sgd", lr = 0.5}]}'])
    assert [r.name for r in cfg.rule.rules] == ["mlplr", "meta_sgd"] and cfg.rule.rules[0].lr_max == 2.0
    assert validate(to_dict(cfg)).rule == cfg.rule  # round-trips through config.json
    _, algo = build(cfg)
    assert [type(r).__name__ for r in algo.rule.rules] == ["MLPLR", "MetaSGD"]
    for bad, msg in (('[{name = "nope"}]', "unknown rule 'nope'"), ("[]", "at least one rule"),
                     ('[{name = "sgd", lrr = 1}]', "lrr")):
        with pytest.raises(ConfigError, match=msg):
            load(None, [f'rule={{name = "chain", rules = {bad}}}'])


def test_a_rule_built_for_other_tensors_is_refused_at_construction_naming_them():
    from innerloop import ANIL, MAML, MetaSGD
    from innerloop.models import MLP

    model = MLP(1, [8, 8], 1)
    everything = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"MetaSGD was built for other tensors than ANIL.*body\.0\.weight"):
        ANIL(model, MetaSGD(everything, lr=0.1), loss_fn=torch.nn.functional.mse_loss,
             metric_fn=torch.nn.functional.mse_loss, inner_steps=1)
    ANIL(model, MetaSGD(ANIL.adapted_shapes(model), lr=0.1), loss_fn=torch.nn.functional.mse_loss,
         metric_fn=torch.nn.functional.mse_loss, inner_steps=1)
    wrong = {**everything, "head.weight": torch.Size([2, 8])}
    with pytest.raises(ValueError, match=r"shapes differ: head\.weight \(2, 8\) ≠ \(1, 8\)"):
        MAML(model, MetaSGD(wrong, lr=0.1), loss_fn=torch.nn.functional.mse_loss,
             metric_fn=torch.nn.functional.mse_loss, inner_steps=1)
    with pytest.raises(ValueError, match=r"adapted but not in the rule: head\.bias"):
        MAML(model, chain(SGD(0.1), MetaSGD({k: v for k, v in everything.items() if k != "head.bias"}, lr=0.1)),
             loss_fn=torch.nn.functional.mse_loss, metric_fn=torch.nn.functional.mse_loss, inner_steps=1)


def test_every_rule_algorithm_and_geometry_class_is_exported_at_the_top_level():
    import innerloop
    from innerloop.algorithms import ALGORITHMS
    from innerloop.geometry import GEOMETRIES
    from innerloop.rules import BuildContext

    ctx = BuildContext({"w": torch.Size([3, 2]), "b": torch.Size([3])}, 2, DT)
    classes = {type(spec.build(spec.config(), ctx)) for spec in RULES.values()}
    classes |= {type(spec.build(spec.config(), ctx)) for spec in GEOMETRIES.values()}
    classes |= set(ALGORITHMS.values())
    missing = sorted(c.__name__ for c in classes if getattr(innerloop, c.__name__, None) is not c)
    assert not missing, f"not exported by innerloop: {missing}"
