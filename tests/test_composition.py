"""Every rule composes with every algorithm, task family and execution path (two meta-steps)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import make
from innerloop.algorithms import ALGORITHMS
from innerloop.rules import RULES


@pytest.mark.parametrize("path", ["loop", "vmap"])
@pytest.mark.parametrize("family", ["sine", "linear"])
@pytest.mark.parametrize("algo_name", sorted(ALGORITHMS))
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_two_meta_steps_give_finite_metrics(rule_name, algo_name, family, path):
    algo, batch = make(rule_name, algo_name, family, steps=2, hidden=(6,))
    params = algo.meta_parameters()
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    for _ in range(2):
        algo.zero_grad()
        stats = algo.meta_backward(batch, path)
        assert all(math.isfinite(v) for v in stats.values())
        if opt is not None:
            opt.step()
    out = algo.evaluate(batch, path)
    assert torch.isfinite(out.metric).all() and out.support_losses.shape == (batch.num_tasks, 2)
    assert all(torch.isfinite(v).all() and v.shape[:2] == (batch.num_tasks, 2) for v in out.trace.values())
