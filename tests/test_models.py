"""Backbones: shapes, vmap safety, and the exact second-order meta-gradient through batch norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import DT, grads_of
from innerloop import MAML, MetaSGD
from innerloop.models import MLP, Conv4, LinNet, LogisticRegression
from innerloop.types import Task


@pytest.mark.parametrize("shape,depth", [((1, 28, 28), 4), ((3, 84, 84), 4), ((3, 32, 32), 2), ((1, 28, 28), 1)])
def test_conv4_shapes(shape, depth):
    m = Conv4(shape, 5, channels=8, depth=depth)
    assert m(torch.randn(3, *shape)).shape == (3, 5)
    assert not list(m.buffers())  # batch statistics only: nothing mutated inside vmap


def test_fc_models_have_body_and_head():
    for m in (MLP(1, [4, 4], 1), LogisticRegression(7), LinNet(7, 1, 5, 3)):
        assert hasattr(m, "body") and hasattr(m, "head")
    assert LinNet(7, 1, 5, 3)(torch.randn(2, 7)).shape == (2, 1)


def _conv_task(n_way=3, shot=2, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda k: torch.randn(2, n_way * k, 1, 8, 8, generator=g, dtype=DT)
    lab = lambda k: torch.arange(n_way).repeat_interleave(k).expand(2, -1)
    return Task(mk(shot), lab(shot), mk(query), lab(query))


def _conv_algo(norm="batch"):
    torch.manual_seed(0)
    model = Conv4((1, 8, 8), 3, channels=3, depth=2, norm=norm).to(DT)
    acc = lambda o, y: (o.argmax(-1) == y).to(o.dtype).mean()
    rule = MetaSGD({n: p.shape for n, p in model.named_parameters()}, 0.3, DT)
    return MAML(model, rule, loss_fn=F.cross_entropy, metric_fn=acc, inner_steps=2)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_conv_norm_second_order_vmap_equals_loop_equals_finite_differences(norm):
    """Guards the torch 2.13 vmap bug in the second-order gradient through batch norm's affine
    parameters (the backbone applies the affine part outside the kernel)."""
    batch = _conv_task()
    grads = []
    for path in ("loop", "vmap"):
        algo = _conv_algo(norm)
        algo.meta_backward(batch, path)
        grads.append(grads_of(algo))
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-11, msg=k)
    # central finite differences of the meta-loss along the norm scale/shift and a conv weight
    algo = _conv_algo(norm)
    params = dict(algo.named_parameters())
    for name in ("model.body.0.norm.weight", "model.body.1.norm.bias", "model.body.1.conv.weight"):
        p = params[name]
        v = torch.randn_like(p)
        eps = 1e-6
        with torch.no_grad():
            p.add_(eps * v)
            up = algo(batch, "vmap").mean().item()
            p.sub_(2 * eps * v)
            down = algo(batch, "vmap").mean().item()
            p.add_(eps * v)
        fd = (up - down) / (2 * eps)
        assert (grads[1][name] * v).sum().item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name
