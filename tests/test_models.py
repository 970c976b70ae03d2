"""Backbones: shapes, vmap safety, and the exact second-order meta-gradient through batch norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import DT, grads_of
from innerloop import MAML, MetaSGD
from innerloop.models import MLP, Conv4, LinNet, LogisticRegression, ResNet12
from innerloop.types import Task


@pytest.mark.parametrize("shape,depth", [((1, 28, 28), 4), ((3, 84, 84), 4), ((3, 32, 32), 2), ((1, 28, 28), 1)])
def test_conv4_shapes(shape, depth):
    m = Conv4(shape, 5, channels=8, depth=depth)
    assert m(torch.randn(3, *shape)).shape == (3, 5)
    assert not list(m.buffers())  # batch statistics only: nothing mutated inside vmap


@pytest.mark.parametrize("pool,readout,shape,feat", [
    ("stride", "mean", (1, 28, 28), 8), ("none", "mean", (3, 32, 32), 8), ("stride", "flatten", (1, 28, 28), 8 * 2 * 2),
    ("max", "mean", (3, 84, 84), 8)])
def test_conv4_variants(pool, readout, shape, feat):
    m = Conv4(shape, 5, channels=8, pool=pool, readout=readout)
    assert m.head.in_features == feat
    assert m(torch.randn(2, *shape)).shape == (2, 5)


@pytest.mark.parametrize("shape", [(3, 84, 84), (3, 32, 32)])
def test_resnet12_is_input_size_agnostic(shape):
    m = ResNet12(shape, 5, widths=(4, 6, 8, 10))
    assert m.head.in_features == 10 and m(torch.randn(2, *shape)).shape == (2, 5)
    assert not list(m.buffers())


def test_fc_models_have_body_and_head():
    for m in (MLP(1, [4, 4], 1), LogisticRegression(7), LinNet(7, 1, 5, 3)):
        assert hasattr(m, "body") and hasattr(m, "head")
    assert LinNet(7, 1, 5, 3)(torch.randn(2, 7)).shape == (2, 1)


def _conv_task(n_way=3, shot=2, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda k: torch.randn(2, n_way * k, 1, 8, 8, generator=g, dtype=DT)
    lab = lambda k: torch.arange(n_way).repeat_interleave(k).expand(2, -1)
    return Task(mk(shot), lab(shot), mk(query), lab(query))


def _conv_algo(norm="batch", arch="conv4"):
    torch.manual_seed(0)
    if arch == "resnet12":
        model = ResNet12((1, 8, 8), 3, widths=(2, 3), norm=norm).to(DT)
    else:
        model = Conv4((1, 8, 8), 3, channels=3, depth=2, norm=norm, pool=arch.split("-")[1] if "-" in arch
                      else "max").to(DT)
    acc = lambda o, y: (o.argmax(-1) == y).to(o.dtype).mean()
    rule = MetaSGD({n: p.shape for n, p in model.named_parameters()}, 0.3, DT)
    return MAML(model, rule, loss_fn=F.cross_entropy, metric_fn=acc, inner_steps=2)


@pytest.mark.parametrize("norm,arch", [("batch", "conv4"), ("group", "conv4")])
def test_conv_norm_second_order_vmap_equals_loop_equals_finite_differences(norm, arch):
    """Guards the torch 2.13 vmap bug in the second-order gradient through batch norm's affine
    parameters (the backbone applies the affine part outside the kernel)."""
    batch = _conv_task()
    grads = []
    for path in ("loop", "vmap"):
        algo = _conv_algo(norm, arch)
        algo.meta_backward(batch, path)
        grads.append(grads_of(algo))
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-11, msg=k)
    # central finite differences of the meta-loss along the norm scale/shift and a conv weight
    algo = _conv_algo(norm, arch)
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


@pytest.mark.parametrize("arch", ["resnet12", "conv4-stride", "conv4-none"])
def test_backbones_vmap_equals_loop_second_order(arch):
    from helpers import assert_paths_agree

    g = assert_paths_agree(lambda: (_conv_algo("batch", arch), _conv_task()))
    assert all(v.abs().sum() > 0 for k, v in g.items() if k.startswith("model.head"))


def test_norm_parameters_can_stay_out_of_the_inner_loop():
    from innerloop import SGD
    from innerloop.algorithms import autograd_value_and_grad, without_norm

    algo = _conv_algo()
    names = without_norm(algo.model, algo.adapted_names(algo.model))
    assert names and not any(".norm." in n for n in names)
    algo2 = MAML(algo.model, SGD(0.3), loss_fn=F.cross_entropy, metric_fn=algo.metric_fn, inner_steps=2,
                 adapted=names)
    task = _conv_task().index(0)
    _, res = algo2.run_task(algo2.params(), task, steps=2, first_order=False, value_and_grad=autograd_value_and_grad)
    assert set(res.params) == set(names)
    algo2.meta_backward(_conv_task())
    assert algo.model.body[0].norm.weight.grad.abs().sum() > 0  # still meta-learned


def test_fast_max_pool_matches_max_pool2d_to_second_order():
    import torch.nn.functional as F

    from innerloop.models.conv import max_pool2

    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.equal(max_pool2(x), F.max_pool2d(x, 2))
    g = torch.randn(3, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    (a,) = torch.autograd.grad(max_pool2(x), x, g, create_graph=True)
    (b,) = torch.autograd.grad(F.max_pool2d(x, 2), x, g, create_graph=True)
    assert torch.equal(a, b)
    v = torch.randn_like(x)  # second order: d<∂pool/∂x · g, v>/dg
    assert torch.equal(torch.autograd.grad((a * v).sum(), g)[0], torch.autograd.grad((b * v).sum(), g)[0])
    assert torch.autograd.gradcheck(max_pool2, (x,)) and torch.autograd.gradgradcheck(max_pool2, (x,))
