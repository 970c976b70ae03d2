"""Small builders shared by the tests (float64 everywhere the maths is compared)."""

from __future__ import annotations

import torch

from innerloop.algorithms import ALGORITHMS
from innerloop.data import LinearBinary, Sine
from innerloop.geometry import GEOMETRIES
from innerloop.models import MLP, LinNet
from innerloop.rules import RULES, BuildContext
from innerloop.types import Task

DT = torch.float64


def as64(task: Task) -> Task:
    return Task(*(t.to(DT) for t in task))


def make(rule_name: str = "sgd", algo_name: str = "maml", family: str = "sine", *, steps: int = 2,
         lr: float = 0.05, seed: int = 0, rule_kwargs: dict | None = None, hidden=(8, 8),
         geometry_name: str | None = None, geometry_kwargs: dict | None = None):
    """A small float64 meta-learner and one meta-batch of 3 tasks."""
    torch.manual_seed(seed)
    if family == "sine":
        fam = Sine(k_shot=5, query=7)
        model = MLP(1, list(hidden), 1)
    else:
        fam = LinearBinary(dim=6, support=4, query=9, balanced=False)
        model = LinNet(6, 1, hidden=5, layers=2)
    model = model.to(DT)
    cls = ALGORITHMS[algo_name]
    names = cls.adapted_names(model)
    params = dict(model.named_parameters())
    spec = RULES[rule_name]
    cfg = spec.config(**({"lr": lr} if "lr" in spec.config.model_fields else {}), **(rule_kwargs or {}))
    ctx = BuildContext({n: params[n].shape for n in names}, steps, DT, learned_init=cls.learns_init)
    rule = RULES[rule_name].build(cfg, ctx)
    geometry = None
    if geometry_name is not None:
        gspec = GEOMETRIES[geometry_name]
        geometry = gspec.build(gspec.config(**(geometry_kwargs or {})), ctx)
    algo = cls(model, rule, loss_fn=fam.loss, metric_fn=fam.metric, inner_steps=steps, geometry=geometry).to(DT)
    batch = as64(fam.sample(3, torch.Generator().manual_seed(seed + 1)))
    return algo, batch


def grads_of(algo) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in algo.named_parameters() if p.requires_grad}


def assert_paths_agree(build) -> dict[str, torch.Tensor]:
    """Build a fresh ``(algo, batch)`` per path with ``build()``; check that the loop and vmap paths
    give the same query losses, mean loss and meta-gradients; return the (loop) meta-gradients."""
    import pytest

    results = []
    for path in ("loop", "vmap"):
        algo, batch = build()
        algo.zero_grad()
        stats = algo.meta_backward(batch, path)
        losses = algo(batch, path).detach()
        results.append((stats, losses, grads_of(algo)))
    (s1, l1, g1), (s2, l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-10)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-9, atol=1e-12, msg=k)
    return g1
