"""MetaMiDA's geometry: the learned inverse mirror map (blockIAF) in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from helpers import DT, assert_paths_agree, grads_of, make
from innerloop.experiments.build import build
from innerloop.experiments.config import ConfigError, load
from innerloop.geometry import GEOMETRIES, Euclidean
from innerloop.geometry.blocks import adapted_blocks, model_layers, prefix_blocks
from innerloop.geometry.mirror import MirrorMap, ModeLinear, TensorDecoder
from innerloop.models import MLP, Conv4, ResNet12
from innerloop.rules import BuildContext
from innerloop.types import Task


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Move every parameter of ``module`` by ``scale · N(0, 1)`` (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def heads(geometry: MirrorMap) -> dict[str, ModeLinear]:
    return {n: m for n, m in geometry.named_modules() if n.endswith(("scale_head", "shift_head"))}


def inner(a: dict, b: dict) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


# ---- structure --------------------------------------------------------------------------------
def test_blocks_are_layers_in_order_and_the_head_is_last():
    algo, _ = make("sgd", "maml", "sine", geometry_name="mirror")
    g = algo.geometry
    assert g.blocks == [["body.0.weight", "body.0.bias"], ["body.2.weight", "body.2.bias"],
                        ["head.weight", "head.bias"]]
    assert set(g.first_scale) == {"body__0__weight", "body__0__bias"}
    assert len(g.encoders) == 4 and len(g.decoders) == 2  # no encoder for the head, no decoder for block 1
    assert prefix_blocks(["a.w", "b.w", "a.b", "c"]) == [["a.w", "a.b"], ["b.w"], ["c"]]


def _conv_layer(i: int) -> list[str]:
    return [f"body.{i}.conv.weight", f"body.{i}.conv.bias", f"body.{i}.norm.weight", f"body.{i}.norm.bias"]


def test_one_block_per_layer_conv_and_its_batchnorm_together():
    """MetaMiDA §4: block i is the i-th CNN layer (conv + BN); 4-CONV + head = 5 blocks."""
    model = Conv4((3, 84, 84), 5, channels=8)
    layers = model_layers(model)
    assert layers == [*(_conv_layer(i) for i in range(4)), ["head.weight", "head.bias"]]
    names = [n for n, _ in model.named_parameters()]
    assert adapted_blocks(names, layers) == layers
    no_norm = [n for n in names if ".norm." not in n]  # BN not inner-adapted (ALFA's protocol)
    assert adapted_blocks(no_norm, layers) == [[f"body.{i}.conv.weight", f"body.{i}.conv.bias"] for i in range(4)] \
        + [["head.weight", "head.bias"]]
    assert adapted_blocks(["head.weight", "head.bias"], layers) == [["head.weight", "head.bias"]]  # ANIL


def test_blocks_of_resnet12_mlp_and_a_user_sequential():
    res = model_layers(ResNet12((3, 32, 32), 5, widths=(4, 4, 4, 4)))
    assert len(res) == 4 * 4 + 1 and res[-1] == ["head.weight", "head.bias"]
    pairs = (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"), ("shortcut", "norm_sc"))
    assert res[:4] == [[f"body.0.{c}.weight", f"body.0.{n}.weight", f"body.0.{n}.bias"] for c, n in pairs]
    assert model_layers(MLP(1, [40, 40], 1)) == [["body.0.weight", "body.0.bias"], ["body.2.weight", "body.2.bias"],
                                                 ["head.weight", "head.bias"]]
    user = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4, 5))
    assert model_layers(user) == [["0.weight", "0.bias", "1.weight", "1.bias"], ["4.weight", "4.bias"]]
    with pytest.raises(ValueError, match="not parameters"):
        adapted_blocks(["nope"], model_layers(user))


def test_built_mirror_geometry_has_five_blocks_on_4conv():
    cfg = load(None, ["task.name=images", "task.dataset=glyphs", "model.name=conv4", "model.channels=4",
                      "geometry.name=mirror", "algorithm.adapt_norm=true"])
    _, algo = build(cfg)
    assert algo.geometry.blocks == [*(_conv_layer(i) for i in range(4)), ["head.weight", "head.bias"]]


def test_mode_linear_equals_dense_kronecker_layer():
    """Row-major ``flatten(X ×_1 W_1 ×_2 W_2 ×_3 W_3) = (W_1 ⊗ W_2 ⊗ W_3) flatten(X)``."""
    torch.manual_seed(0)
    layer = ModeLinear((4, 3, 2), (2, 5, 1), init="signed", bias=0.0, dtype=DT)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 3, 2, dtype=DT)
    w1, w2, w3 = layer.factors
    want = torch.kron(torch.kron(w1, w2), w3) @ x.reshape(-1) + layer.bias.reshape(-1)
    torch.testing.assert_close(layer(x).reshape(-1), want, rtol=1e-13, atol=1e-13)


def test_each_layer_halves_every_mode():
    dec = TensorDecoder((8, 5), depth=3, dtype=DT)
    assert dec.bottleneck == (1, 1)
    assert [lay.out_shape for lay in dec.trunk] == [(2, 1), (4, 2)]
    assert dec.scale_head.in_shape == (4, 2) and dec.scale_head.out_shape == (8, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parameters_are_created_in_the_context_dtype(dtype):
    ctx = BuildContext({"a.w": torch.Size([4, 3]), "a.b": torch.Size([4]), "b.w": torch.Size([2, 4])}, 1, dtype)
    spec = GEOMETRIES["mirror"]
    g = spec.build(spec.config(), ctx)
    assert all(p.dtype == dtype for p in g.parameters())


# ---- identity at initialisation ---------------------------------------------------------------
@pytest.mark.parametrize("scale", ["sigmoid", "exp"])
@pytest.mark.parametrize("algo_name,family", [("maml", "sine"), ("maml", "linear"), ("anil", "sine")])
def test_identity_at_init(scale, algo_name, family):
    algo, _ = make("sgd", algo_name, family, geometry_name="mirror", geometry_kwargs={"scale": scale})
    g = algo.geometry
    z0 = {n: algo.params()[n] for n in g.names}
    gen = torch.Generator().manual_seed(3)
    for z in (z0, {k: 5 * torch.randn(v.shape, generator=gen, dtype=DT) for k, v in z0.items()}):
        out = g(z)
        assert list(out) == list(z)
        for k in z:
            assert torch.equal(out[k], z[k]), k


def test_identity_mirror_map_reproduces_euclidean_maml():
    """At initialisation g = id, so mirror descent is plain MAML: same losses, same θ0 meta-gradient."""
    results = []
    for geometry_name in ("euclidean", "mirror"):
        algo, batch = make("meta_sgd", "maml", "sine", steps=3, geometry_name=geometry_name)
        algo.zero_grad()
        algo.meta_backward(batch)
        results.append((algo(batch).detach(), grads_of(algo)))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-13, atol=1e-14)
    for k in g1:  # θ0 and the rule's parameters
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-11, atol=1e-13, msg=k)


def test_euclidean_stays_the_default():
    algo, _ = make("sgd", "maml", "sine")
    assert type(algo.geometry) is Euclidean
    assert load(None, []).geometry.name == "euclidean"


# ---- monotonicity -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sine", "linear"])
def test_monotone_after_moderate_perturbation(family):
    """(z − z')ᵀ(g(z) − g(z')) > 0 on random pairs, with σ = 2·sigmoid and every flow parameter
    moved by 0.3·N(0, 1). Not a theorem (see the counterexample below): with the flow's parameters
    moved by 1·N(0, 1) violations already appear on these pairs."""
    algo, _ = make("sgd", "maml", family, geometry_name="mirror")
    g = algo.geometry
    perturb(g, 0.3)
    z0 = algo.params()
    gen = torch.Generator().manual_seed(1)
    rnd = lambda s: {k: v + s * torch.randn(v.shape, generator=gen, dtype=DT) for k, v in z0.items()}
    with torch.no_grad():
        for size in (0.1, 1.0, 10.0):
            for _ in range(20):
                z, zp = rnd(size), rnd(size)
                d = {k: z[k] - zp[k] for k in z}
                gz, gzp = g(z), g(zp)
                ip = inner(d, {k: gz[k] - gzp[k] for k in z})
                assert ip > 0.5 * inner(d, d)  # the bound holds with room at this perturbation


@pytest.mark.parametrize("model", ["conv4", "resnet12", "mlp"])
def test_forward_by_shape_groups_equals_the_map_one_tensor_at_a_time(model):
    """forward stacks the tensors of one shape; reference computes each alone. They agree (float64)
    in value, first and second derivatives, with every flow parameter moved off its initialisation."""
    net = {"conv4": lambda: Conv4((1, 28, 28), 5, channels=4), "mlp": lambda: MLP(3, (6, 6), 1),
           "resnet12": lambda: ResNet12((3, 16, 16), 5, widths=(2, 3, 4, 5))}[model]().to(DT)
    shapes = {n: p.shape for n, p in net.named_parameters()}
    g = MirrorMap(shapes, dtype=DT, layers=model_layers(net))
    perturb(g, 0.3)
    gen = torch.Generator().manual_seed(2)
    z = {n: torch.randn(s, generator=gen, dtype=DT, requires_grad=True) for n, s in shapes.items()}
    out, ref = g(z), g.reference(z)
    assert list(out) == list(ref) == list(z)
    for n in z:
        torch.testing.assert_close(out[n], ref[n], rtol=1e-12, atol=1e-12)
    w = {n: torch.randn(s, generator=gen, dtype=DT) for n, s in shapes.items()}
    flow = list(g.parameters())
    wrt = [*z.values(), *flow]

    def derivatives(phi):  # first derivatives w.r.t. z and the flow, then a second derivative through them
        first = torch.autograd.grad(inner(phi, w), wrt, create_graph=True)
        second = torch.autograd.grad(sum((x**2).sum() for x in first), wrt, materialize_grads=True)
        return [*first, *second]

    for a, b in zip(derivatives(out), derivatives(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_monotonicity_can_fail_when_the_flow_couples_blocks_strongly():
    """An explicit counterexample: two scalar blocks, every hidden layer the identity, so
    g(z) = (z1, z2 − K·relu(z1)). For z1 > 0 its Jacobian is [[1, 0], [−K, 1]], whose symmetric part
    is indefinite once K > 2, whatever σ is: an IAF is invertible but not a mirror map in general."""
    g = MirrorMap({"a.w": torch.Size([1]), "b.w": torch.Size([1])}, depth=1, dtype=DT)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, ModeLinear):
                for w in m.factors:
                    w.fill_(1.0)
                m.bias.zero_()
        g.decoders[0].tensors[0].scale_head.factors[0].zero_()
        g.decoders[0].tensors[0].shift_head.factors[0].fill_(-3.0)
    t = lambda a, b: {"a.w": torch.tensor([a], dtype=DT), "b.w": torch.tensor([b], dtype=DT)}
    z, zp = t(2.0, 0.0), t(1.0, -1.0)
    with torch.no_grad():
        gz, gzp = g(z), g(zp)
    torch.testing.assert_close(gz["b.w"], torch.tensor([-6.0], dtype=DT))
    d = {k: z[k] - zp[k] for k in z}
    assert inner(d, {k: gz[k] - gzp[k] for k in z}) == pytest.approx(1 + 1 - 3)  # = −1 < 0


# ---- learning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sine", "linear"])
def test_every_head_learns_and_then_every_flow_parameter(family):
    algo, batch = make("sgd", "maml", family, steps=2, geometry_name="mirror")
    algo.zero_grad()
    algo.meta_backward(batch)  # one second-order MAML meta-gradient at g = id
    hs = heads(algo.geometry)
    assert len(hs) == 2 * sum(len(b) for b in algo.geometry.blocks[1:])
    for name, head in hs.items():
        assert head.factors[0].grad.abs().sum() > 0, name  # the zeroed factor
        assert head.bias.grad.abs().sum() > 0, name
    # after one meta-step every parameter of the flow receives a meta-gradient
    with torch.no_grad():
        for p in algo.parameters():
            p.sub_(0.1 * p.grad)
    algo.zero_grad()
    algo.meta_backward(batch)
    for name, p in algo.geometry.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_all_zero_heads_never_learn_their_weights():
    """Why only one factor is zeroed: with every factor zero (the released initialisation), the
    gradient of each factor is multiplied by the other zero factor, so it stays zero."""
    algo, batch = make("sgd", "maml", "sine", geometry_name="mirror")
    head = algo.geometry.decoders[-1].tensors[0].shift_head  # head.weight: two modes
    with torch.no_grad():
        head.factors[1].zero_()
    algo.zero_grad()
    algo.meta_backward(batch)
    assert head.bias.grad.abs().sum() > 0
    assert all(w.grad.abs().sum() == 0 for w in head.factors)


def test_released_zero_heads_option_learns_only_biases_and_one_mode_heads():
    """``heads = "zero"`` (the released initialisation): g is the identity, the heads' biases learn,
    a head for a 1-D tensor (one mode) learns its factor, and a head for a tensor of two or more
    modes keeps every factor at zero, even after a meta-step."""
    algo, batch = make("sgd", "maml", "sine", geometry_name="mirror", geometry_kwargs={"heads": "zero"})
    assert all(torch.equal(w, torch.zeros_like(w)) for h in heads(algo.geometry).values() for w in h.factors)
    z = {n: p.detach() for n, p in algo.model.named_parameters()}
    g = algo.geometry(z)
    assert all(torch.equal(g[n], z[n]) for n in z)
    for _ in range(2):
        algo.zero_grad()
        algo.meta_backward(batch)
        for name, head in heads(algo.geometry).items():
            assert head.bias.grad.abs().sum() > 0, name
            moved = [w.grad.abs().sum() > 0 for w in head.factors]
            assert all(moved) if len(head.factors) == 1 else not any(moved), name
        with torch.no_grad():
            for p in algo.parameters():
                p.sub_(0.1 * p.grad)
    with pytest.raises(ConfigError, match="geometry.heads"):
        load(None, ["geometry.name=mirror", "geometry.heads=ones"])


# ---- execution paths and meta-gradients ------------------------------------------------------
@pytest.mark.parametrize("family", ["sine", "linear"])
@pytest.mark.parametrize("algo_name", ["maml", "fomaml", "anil", "random_init"])
@pytest.mark.parametrize("rule_name", ["sgd", "meta_sgd"])
def test_vmap_equals_loop(rule_name, algo_name, family):
    def build():
        algo, batch = make(rule_name, algo_name, family, geometry_name="mirror")
        perturb(algo.geometry, 0.1)  # off the identity
        return algo, batch

    g1 = assert_paths_agree(build)
    assert any(k.startswith("geometry.") for k in g1)
    assert all(g1[k].abs().sum() > 0 for k in g1 if k.startswith("geometry.first_"))


def test_evaluate_paths_agree():
    algo, batch = make("sgd", "maml", "linear", steps=3, geometry_name="mirror")
    perturb(algo.geometry, 0.1)
    a, b = algo.evaluate(batch, "loop"), algo.evaluate(batch, "vmap")
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.support_losses, b.support_losses, rtol=1e-10, atol=1e-12)


def test_gradcheck_meta_loss_through_two_steps():
    """float64 finite differences against autograd for the meta-loss w.r.t. every flow parameter
    and θ0 (3 blocks, all heads off zero), through two second-order inner steps (one task, for speed)."""
    algo, batch = make("sgd", "maml", "sine", steps=2, lr=0.1, hidden=(3, 2), geometry_name="mirror",
                       geometry_kwargs={"depth": 2})
    perturb(algo.geometry, 0.1)
    batch = Task(*(t[:1] for t in batch))
    names = [n for n, p in algo.named_parameters() if p.requires_grad]
    assert sum(n.startswith("geometry.") for n in names) > 50
    tensors = [dict(algo.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    f = lambda *ts: functional_call(algo, dict(zip(names, ts, strict=True)), (batch,)).mean()
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---- options and variants ---------------------------------------------------------------------
def test_anil_adapts_the_head_as_a_single_elementwise_block():
    algo, batch = make("sgd", "anil", "linear", steps=2, geometry_name="mirror")
    g = algo.geometry
    assert g.blocks == [["head.weight", "head.bias"]]
    assert not len(g.encoders) and not len(g.decoders)
    algo.zero_grad()
    algo.meta_backward(batch)
    for name, p in g.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_exp_scale_runs_and_differs_from_the_bounded_one_off_init():
    out = []
    for scale in ("sigmoid", "exp"):
        algo, batch = make("sgd", "maml", "sine", geometry_name="mirror", geometry_kwargs={"scale": scale})
        perturb(algo.geometry, 0.1)
        algo.zero_grad()
        stats = algo.meta_backward(batch, "vmap")
        assert torch.isfinite(torch.tensor(stats["loss"]))
        assert all(torch.isfinite(p.grad).all() for p in algo.geometry.parameters())
        out.append(algo(batch).detach())
    assert not torch.equal(out[0], out[1])
    a = torch.linspace(-3, 3, 7, dtype=DT)
    torch.testing.assert_close(MirrorMap({"w": torch.Size([1])}, scale="exp").sigma(a), a.exp())
    bounded = MirrorMap({"w": torch.Size([1])}).sigma(a)
    assert ((bounded > 0) & (bounded < 2)).all() and bounded[3] == 1


def test_config_selects_the_mirror_geometry():
    cfg = load(None, ["geometry.name=mirror", "geometry.scale=exp", "geometry.depth=2", "model.hidden=[4]"])
    assert cfg.geometry.name == "mirror" and cfg.geometry.scale == "exp" and cfg.geometry.depth == 2
    _, algo = build(cfg)
    assert isinstance(algo.geometry, MirrorMap) and algo.geometry.scale == "exp"
    assert all(p.dtype == torch.float32 for p in algo.geometry.parameters())
    with pytest.raises(ConfigError, match="scale"):
        load(None, ["geometry.name=mirror", "geometry.scale=softplus"])
    with pytest.raises(ConfigError, match="geometry.width"):
        load(None, ["geometry.name=mirror", "geometry.width=3"])
