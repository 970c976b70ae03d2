"""Memory controls: second order through the last k steps, activation checkpointing, vmap chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import DT, grads_of, make
from innerloop import MAML, SGD
from innerloop.models import Conv4
from innerloop.rules import RULES, BuildContext
from innerloop.types import Task


def _meta_grads(build, path="loop", **attrs):
    algo, batch = build()
    for k, v in attrs.items():
        setattr(algo, k, v)
    algo.zero_grad()
    stats = algo.meta_backward(batch, path)
    return stats, grads_of(algo)


def _assert_same(ga, gb, rtol=1e-10, atol=1e-12):
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=rtol, atol=atol, msg=k)


def _differs(ga, gb):
    return any(not torch.allclose(ga[k], gb[k], rtol=1e-6, atol=1e-9) for k in ga)


def test_last_k_second_order_closed_form_linear_regression():
    """Two SGD steps on linear least squares, second order through the last step only:
    dL/dw0 = (I)(I − αH) ∇Lq(w2), where the full meta-gradient is (I − αH)² ∇Lq(w2)."""
    torch.manual_seed(3)
    d, ns, nq, a = 4, 6, 9, 0.05
    w0 = torch.randn(d, 1, dtype=DT)
    xs, ys = torch.randn(ns, d, dtype=DT), torch.randn(ns, 1, dtype=DT)
    xq, yq = torch.randn(nq, d, dtype=DT), torch.randn(nq, 1, dtype=DT)
    h = 2 / ns * xs.T @ xs
    w1 = w0 - a * (h @ w0 - 2 / ns * xs.T @ ys)
    w2 = w1 - a * (h @ w1 - 2 / ns * xs.T @ ys)
    gq = 2 / nq * xq.T @ (xq @ w2 - yq)
    eye = torch.eye(d, dtype=DT)
    expected = {None: (eye - a * h) @ (eye - a * h) @ gq, 2: (eye - a * h) @ (eye - a * h) @ gq,
                1: (eye - a * h) @ gq, 0: gq}
    for k, exp in expected.items():
        model = nn.Linear(d, 1, bias=False).to(DT)
        with torch.no_grad():
            model.weight.copy_(w0.T)
        algo = MAML(model, SGD(a), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=2, second_order_steps=k)
        algo.meta_backward(Task(xs[None], ys[None], xq[None], yq[None]), "loop")
        torch.testing.assert_close(model.weight.grad.T, exp, rtol=1e-12, atol=1e-12, msg=f"k={k}")


@pytest.mark.parametrize("path", ["loop", "vmap"])
@pytest.mark.parametrize("rule_name", ["sgd", "meta_sgd", "alfa", "klin"])
def test_last_k_second_order_limits(rule_name, path):
    """k = number of steps is plain second order; k = 0 is first order (FOMAML); 0 < k < S neither."""
    build = lambda fo=False: make(rule_name, "maml", "sine", steps=3)
    _, full = _meta_grads(build, path)
    _, k3 = _meta_grads(build, path, second_order_steps=3)
    _assert_same(full, k3)
    _, fo = _meta_grads(build, path, first_order=True)
    _, k0 = _meta_grads(build, path, second_order_steps=0)
    _assert_same(fo, k0)
    _, k1 = _meta_grads(build, path, second_order_steps=1)
    assert _differs(k1, full) and _differs(k1, fo)


@pytest.mark.parametrize("rule_name", ["sgd", "meta_sgd", "alfa", "meta_curvature", "mlplr", "lslr"])
@pytest.mark.parametrize("order", ["second", "first", "last1"])
def test_checkpointing_gives_the_same_meta_gradient(rule_name, order):
    attrs = {"first": {"first_order": True}, "last1": {"second_order_steps": 1}}.get(order, {})
    build = lambda: make(rule_name, "maml", "sine", steps=3)
    s1, plain = _meta_grads(build, **attrs)
    s2, ckpt = _meta_grads(build, checkpoint=True, **attrs)
    _assert_same(plain, ckpt)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-12)


def test_checkpointing_with_mirror_geometry_and_anil():
    for algo_name, geo in (("anil", None), ("maml", "mirror")):
        build = lambda a=algo_name, g=geo: make("sgd", a, "sine", steps=2, geometry_name=g)
        _, plain = _meta_grads(build)
        _, ckpt = _meta_grads(build, checkpoint=True)
        _assert_same(plain, ckpt)


def _conv_build(steps=3, seed=0):
    def build():
        torch.manual_seed(seed)
        model = Conv4((1, 12, 12), 3, channels=4, depth=2).to(DT)
        shapes = {n: p.shape for n, p in model.named_parameters()}
        rule = RULES["meta_sgd"].build(RULES["meta_sgd"].config(lr=0.1), BuildContext(shapes, steps, DT))
        algo = MAML(model, rule, loss_fn=F.cross_entropy, metric_fn=lambda o, y: (o.argmax(-1) == y).to(o.dtype).mean(),
                    inner_steps=steps).to(DT)
        g = torch.Generator().manual_seed(seed + 1)
        b, n = 4, 3
        batch = Task(torch.randn(b, n, 1, 12, 12, generator=g, dtype=DT), torch.arange(n).expand(b, n).contiguous(),
                     torch.randn(b, 2 * n, 1, 12, 12, generator=g, dtype=DT),
                     torch.arange(n).repeat(2).expand(b, 2 * n).contiguous())
        return algo, batch
    return build


def test_checkpointing_conv_batchnorm():
    _, plain = _meta_grads(_conv_build())
    _, ckpt = _meta_grads(_conv_build(), checkpoint=True)
    _assert_same(plain, ckpt)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_vmap_chunks_give_the_same_meta_gradient(chunk):
    s1, whole = _meta_grads(_conv_build(), "vmap")
    s2, chunked = _meta_grads(_conv_build(), "vmap", vmap_chunk=chunk)
    _assert_same(whole, chunked)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-12)
    assert s1["metric"] == pytest.approx(s2["metric"], rel=1e-12)


def test_bad_values_are_refused():
    algo, batch = make("sgd", "maml", "sine", steps=2)
    algo.checkpoint = True
    with pytest.raises(ValueError, match="loop and threads paths"):
        algo.meta_backward(batch, "vmap")
    kfc, _ = make("kfc", "maml", "sine", steps=2)
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        MAML(kfc.model, kfc.rule, loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=2, checkpoint=True)
    model = nn.Linear(2, 1)
    for kw in ({"second_order_steps": -1}, {"vmap_chunk": 0}):
        with pytest.raises(ValueError, match="must be"):
            MAML(model, SGD(0.1), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=1, **kw)


def test_config_wires_the_controls_and_refuses_bad_combinations():
    from innerloop.experiments.build import build, choose_path
    from innerloop.experiments.config import ConfigError, load

    cfg = load(None, ["algorithm.inner_steps=3", "algorithm.second_order_steps=1", "algorithm.checkpoint=true",
                      "train.vmap_chunk=5"])
    _, algo = build(cfg)
    assert (algo.second_order_steps, algo.checkpoint, algo.vmap_chunk) == (1, True, 5)
    assert choose_path(algo, "auto", torch.device("cpu")) == "loop"
    with pytest.raises(ConfigError, match="second_order_steps"):
        load(None, ["algorithm.name=fomaml", "algorithm.second_order_steps=1"])
    with pytest.raises(ConfigError, match="checkpoint"):
        load(None, ["algorithm.checkpoint=true", "train.execution=vmap"])
    with pytest.raises(ConfigError, match="does not support activation checkpointing"):
        build(load(None, ["algorithm.checkpoint=true", "rule.name=kfc"]))
    with pytest.raises(ConfigError, match="vmap_chunk"):
        load(None, ["train.vmap_chunk=0"])
