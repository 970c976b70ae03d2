"""Kronecker-factored rules: Meta-Curvature, KLin and KFC (KFO) against dense plain-PyTorch formulas.

Row-major ``vec`` throughout: ``vec(L G R) = (L ⊗ Rᵀ) vec(G)`` (dense ``torch.kron``).
Everything in float64 with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from helpers import DT
from innerloop import Euclidean, inner_loop
from innerloop.algorithms import autograd_value_and_grad, func_value_and_grad
from innerloop.params import safe_key
from innerloop.rules import RULES, BuildContext
from innerloop.rules.kfo import KroneckerOptimizer
from innerloop.rules.kronecker import as_matrices, matrix_dims, mode_dims, mode_product
from innerloop.rules.meta_curvature import MetaCurvature

# the matrix view, written out by hand: shape -> (n, m, number of matrices)
VIEWS = {
    "fc": ((4, 5), (4, 5, 1)),
    "bias": ((6,), (6, 1, 1)),
    "conv": ((3, 2, 2, 3), (2, 6, 3)),  # (out, C, kh, kw): n = C, m = kh·kw, one matrix per filter
    "one": ((1,), (1, 1, 1)),
}


def eye(n):
    return torch.eye(n, dtype=DT)


def kron(a, b):
    # torch 2.13's torch.kron raises on a non-contiguous (e.g. transposed) argument
    return torch.kron(a.contiguous(), b.contiguous())


def randomize(module: nn.Module, seed: int, scale: float = 0.3):
    """Move every parameter away from its initial value (deterministically)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def build(name: str, shapes: dict, steps: int = 2, **kwargs):
    spec = RULES[name]
    return spec.build(spec.config(**kwargs), BuildContext(shapes, steps, DT))


# ---- the views and products -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VIEWS))
def test_matrix_view_shapes(kind):
    shape, (n, m, b) = VIEWS[kind]
    assert matrix_dims(shape) == (n, m)
    assert as_matrices(torch.zeros(shape), shape).shape == (b, n, m)


def test_mode_dims():
    assert mode_dims((4,)) is None and mode_dims(()) is None
    assert mode_dims((4, 5)) == (4, 5)
    assert mode_dims((3, 2, 2, 3)) == (3, 2, 6)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_mode_product_matches_dense_kron(mode):
    torch.manual_seed(0)
    sizes = [2, 3, 4]
    x = torch.randn(sizes, dtype=DT)
    mat = torch.randn(5, sizes[mode], dtype=DT)  # rectangular on purpose
    factors = [mat if i == mode else eye(s) for i, s in enumerate(sizes)]
    dense = kron(kron(factors[0], factors[1]), factors[2])
    out_shape = list(sizes)
    out_shape[mode] = 5
    torch.testing.assert_close(mode_product(x, mat, mode), (dense @ x.reshape(-1)).reshape(out_shape),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("psd", [False, True])
@pytest.mark.parametrize("kind", sorted(VIEWS))
def test_klin_transform_matches_dense_kron(kind, psd):
    """U(g) = vec(L G R) per matrix of the view; conv filters share one (L, R)."""
    shape, (n, m, b) = VIEWS[kind]
    rule = build("klin", {"p": torch.Size(shape)}, psd=psd)
    randomize(rule, seed=1)
    torch.manual_seed(2)
    g = torch.randn(shape, dtype=DT)
    xi = rule.meta_xi(["p"])["p"]
    left, right = xi["L0"], xi["R0"]
    assert left.shape == (n, n) and right.shape == (m, m)
    if psd:
        left, right = left.T @ left, right.T @ right
    dense = kron(eye(b), kron(left, right.T))
    torch.testing.assert_close(rule.transform("p", xi, g), (dense @ g.reshape(-1)).reshape(shape),
                               rtol=1e-13, atol=1e-13)


# ---- Meta-Curvature -------------------------------------------------------------------------------


def test_meta_curvature_step_matches_dense_formula():
    shapes = {"conv.weight": torch.Size((3, 2, 2, 3)), "conv.bias": torch.Size((3,)),
              "fc.weight": torch.Size((4, 5)), "fc.bias": torch.Size((4,)), "scalar": torch.Size(())}
    lr = 0.3
    rule = build("meta_curvature", shapes, lr=lr)
    assert isinstance(rule, MetaCurvature)
    randomize(rule, seed=3)
    torch.manual_seed(4)
    grads = {k: torch.randn(s, dtype=DT) for k, s in shapes.items()}
    updates, state = rule(grads, (), grads, step=0)
    assert state == ()

    def p(d, k):
        return d[safe_key(k)]

    # conv: (M_out ⊗ M_inᵀ ⊗ M_fᵀ) vec(G), G viewed as (out, C, kh·kw)
    k = "conv.weight"
    dense = kron(p(rule.m_out, k), kron(p(rule.m_in, k).T, p(rule.m_f, k).T))
    assert p(rule.m_out, k).shape == (3, 3) and p(rule.m_in, k).shape == (2, 2) and p(rule.m_f, k).shape == (6, 6)
    torch.testing.assert_close(updates[k], -lr * (dense @ grads[k].reshape(-1)).reshape(shapes[k]),
                               rtol=1e-13, atol=1e-13)
    # linear: M_out G M_in = (M_out ⊗ M_inᵀ) vec(G)
    k = "fc.weight"
    dense = kron(p(rule.m_out, k), p(rule.m_in, k).T)
    torch.testing.assert_close(updates[k], -lr * (dense @ grads[k].reshape(-1)).reshape(shapes[k]),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(updates[k], -lr * p(rule.m_out, k) @ grads[k] @ p(rule.m_in, k),
                               rtol=1e-13, atol=1e-13)
    # 0-D and 1-D: elementwise
    for k in ("conv.bias", "fc.bias", "scalar"):
        torch.testing.assert_close(updates[k], -lr * p(rule.diag, k) * grads[k], rtol=1e-14, atol=1e-14)
    assert set(rule.m_f) == {safe_key("conv.weight")}


def test_meta_curvature_one_by_one_conv_equals_linear():
    """The input/filter factors act from the right, so a 1×1 conv is preconditioned like a linear layer."""
    shapes = {"conv": torch.Size((4, 5, 1, 1)), "fc": torch.Size((4, 5))}
    rule = build("meta_curvature", shapes)
    randomize(rule, seed=5)
    with torch.no_grad():
        rule.m_out["fc"].copy_(rule.m_out["conv"])
        rule.m_in["fc"].copy_(rule.m_in["conv"])
        rule.m_f["conv"].fill_(1.0)
    g = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(6))
    u, _ = rule({"conv": g.reshape(4, 5, 1, 1), "fc": g}, (), {}, step=0)
    torch.testing.assert_close(u["conv"].reshape(4, 5), u["fc"], rtol=1e-14, atol=1e-14)


# ---- KFO: the inner adaptation of ξ against a hand-unrolled reference --------------------------------


def tiny_model():
    """conv (out 3, C 2, 2×2) → tanh → linear 12 → 1: every kind of view, incl. a 1-element bias."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(2, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(12, 1)).to(DT)


HAND_VIEWS = {"0.weight": (2, 4, 3), "0.bias": (3, 1, 1), "3.weight": (1, 12, 1), "3.bias": (1, 1, 1)}


def dense_kfo(xi: dict, g, *, depth, psd, normalize, scale, eps, view):
    """U_ξ(g) with dense Kronecker matrices and a literal ReLU network (reference)."""
    n, m, b = view
    v = g.reshape(-1)
    if normalize:
        norm = torch.sqrt((v * v).sum())
        v = v / (norm + eps)
    for i in range(depth):
        if i:
            v = torch.relu(v)
        left, right = xi[f"L{i}"], xi[f"R{i}"]
        if psd:
            left, right = left.T @ left, right.T @ right
        v = kron(eye(b), kron(left, right.T)) @ v
    if normalize:
        v = norm * v
    if scale:
        v = xi["s"] * v
    return v.reshape(g.shape)


RULE_SETTINGS = {  # each rule's defaults (KLin's psd as released; KFC's plain factors as in the paper)
    "klin": dict(depth=1, normalize=False, scale=False, psd=True),
    "kfc": dict(depth=2, normalize=True, scale=True, psd=False),
    "kfc-psd": dict(depth=2, normalize=True, scale=True, psd=True),  # the option
}


def reference_adaptation(model, theta0, xi0, x, y, *, name, lr, steps, first_order):
    """Plain ``torch.autograd.grad`` unroll: ξ_t = ξ_{t−1} − α ∇ξ_{t−1} L_s(θ_t), θ_{t+1} = θ_t − α U_{ξ_t}(g_t)."""
    st = RULE_SETTINGS[name]
    theta, xi = dict(theta0), {k: dict(v) for k, v in xi0.items()}
    scales = []
    for t in range(steps):
        loss = F.mse_loss(functional_call(model, theta, (x,)), y)
        if t > 0:
            flat = [(k, p) for k in xi for p in xi[k]]
            dxi = torch.autograd.grad(loss, [xi[k][p] for k, p in flat], create_graph=not first_order,
                                      retain_graph=True)
            for (k, p), d in zip(flat, dxi, strict=True):
                xi[k][p] = xi[k][p] - lr * d
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=not first_order)
        theta = {k: v - lr * dense_kfo(xi[k], g, depth=st["depth"] if HAND_VIEWS[k][:2] != (1, 1) else 1,
                                        psd=st["psd"], normalize=st["normalize"], scale=st["scale"], eps=1e-8,
                                        view=HAND_VIEWS[k])
                 for (k, v), g in zip(theta.items(), grads, strict=True)}
        if st["scale"]:
            scales.append({k: xi[k]["s"].detach() for k in xi})
    return theta, scales


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("name", ["klin", "kfc", "kfc-psd"])
def test_kfo_inner_adaptation_matches_hand_unrolled_reference(name, steps, first_order):
    lr = 0.4
    model = tiny_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    option = {"psd": True} if name == "kfc-psd" else {}
    rule = build(name.removesuffix("-psd"), shapes, steps=steps, lr=lr, **option)
    assert isinstance(rule, KroneckerOptimizer)
    # away from the identity, both ReLU sides active. (At some seeds the 3-element conv bias is negative
    # before the ReLU at every step; its factors then get exactly zero meta-gradient, in both computations.)
    randomize(rule, seed=18, scale=0.2)
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(6, 2, 3, 3, generator=gen, dtype=DT), torch.randn(6, 1, generator=gen, dtype=DT)
    xq, yq = torch.randn(8, 2, 3, 3, generator=gen, dtype=DT), torch.randn(8, 1, generator=gen, dtype=DT)

    # the rule, through the library's inner loop
    theta0 = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    forward = lambda p, inp: functional_call(model, p, (inp,))
    res = inner_loop(forward, theta0, x, y, rule=rule, geometry=Euclidean(), loss_fn=F.mse_loss, steps=steps,
                     first_order=first_order, value_and_grad=autograd_value_and_grad)
    meta = dict(rule.named_parameters())
    q = F.mse_loss(forward(res.params, xq), yq)
    got = torch.autograd.grad(q, list(theta0.values()) + list(meta.values()))

    # the reference, on independent leaf copies of θ0 and ξ0
    theta_ref = {k: v.detach().clone().requires_grad_() for k, v in theta0.items()}
    xi_ref = {k: {p: v.detach().clone().requires_grad_() for p, v in d.items()}
              for k, d in rule.meta_xi(shapes).items()}
    adapted, scales = reference_adaptation(model, theta_ref, xi_ref, x, y, name=name, lr=lr, steps=steps,
                                           first_order=first_order)
    for k in adapted:
        torch.testing.assert_close(res.params[k], adapted[k], rtol=1e-12, atol=1e-13, msg=k)
    q_ref = F.mse_loss(forward(adapted, xq), yq)
    leaves = list(theta_ref.values()) + [xi_ref[k][p] for k in xi_ref for p in xi_ref[k]]
    want = torch.autograd.grad(q_ref, leaves)
    # the same meta-gradients, to θ0 and to every factor of ξ0, keyed alike
    want_by_name = dict(zip([f"θ.{k}" for k in theta_ref] + [f"ξ.{k}.{p}" for k in xi_ref for p in xi_ref[k]],
                            want, strict=True))
    got_by_name = {f"θ.{k}": g for k, g in zip(theta0, got[:len(theta0)], strict=True)}
    for (pname, _), g in zip(meta.items(), got[len(theta0):], strict=True):
        group, *rest = pname.split(".")
        key = rest[-1].replace("__", ".")
        sub = "s" if group == "scale" else f"{'L' if group == 'left' else 'R'}{rest[0]}"
        got_by_name[f"ξ.{key}.{sub}"] = g
    assert got_by_name.keys() == want_by_name.keys()
    for k in want_by_name:
        assert want_by_name[k].abs().sum() > 0, k
        torch.testing.assert_close(got_by_name[k], want_by_name[k], rtol=1e-10, atol=1e-12, msg=k)

    # the reported scales are the adapted s_t used at step t
    if RULE_SETTINGS[name]["scale"]:
        assert set(res.trace) == {"support_grad_norm"} | {f"scale.{k}" for k in shapes}
        for k in shapes:
            torch.testing.assert_close(res.trace[f"scale.{k}"], torch.stack([s[k] for s in scales]),
                                       rtol=1e-12, atol=1e-13)
        assert res.trace["scale.0.weight"][1] != res.trace["scale.0.weight"][0]  # s is adapted too
    else:
        assert set(res.trace) == {"support_grad_norm"}

    # the vmap path (torch.func gradients) adapts identically
    vres = torch.func.vmap(lambda xs, ys: inner_loop(
        forward, theta0, xs, ys, rule=rule, geometry=Euclidean(), loss_fn=F.mse_loss, steps=steps,
        first_order=first_order, value_and_grad=func_value_and_grad).params)(x[None], y[None])
    for k in adapted:
        torch.testing.assert_close(vres[k][0], adapted[k], rtol=1e-12, atol=1e-13, msg=k)


@pytest.mark.parametrize("name, psd", [("klin", True), ("klin", False), ("kfc", True), ("kfc", False)])
def test_transform_all_stacks_equal_shapes_and_equals_each_tensor_alone(name, psd):
    """transform_all computes equal-shaped tensors as one stack; it equals transform tensor by tensor,
    in value and in the gradients to ξ and to g (float64), for every kind of view."""
    shapes = {"c1": (3, 2, 2, 2), "c2": (3, 2, 2, 2), "w1": (4, 5), "w2": (4, 5), "b1": (4,), "b2": (4,),
              "b3": (4,), "s1": (), "s2": (), "one": (1,), "lone": (6,)}
    rule = build(name, shapes, psd=psd)
    randomize(rule, seed=3, scale=0.2)
    gen = torch.Generator().manual_seed(4)
    grads = {k: torch.randn(s, generator=gen, dtype=DT, requires_grad=True) for k, s in shapes.items()}
    xi = rule.meta_xi(shapes)
    together = rule.transform_all(xi, grads)
    alone = {k: rule.transform(k, xi[k], g) for k, g in grads.items()}
    assert list(together) == list(shapes)
    w = {k: torch.randn(s, generator=gen, dtype=DT) for k, s in shapes.items()}
    leaves = [*grads.values(), *rule.parameters()]
    for k in shapes:
        torch.testing.assert_close(together[k], alone[k], rtol=1e-12, atol=1e-14, msg=k)
    d_together = torch.autograd.grad(sum((together[k] * w[k]).sum() for k in w), leaves)
    d_alone = torch.autograd.grad(sum((alone[k] * w[k]).sum() for k in w), leaves)
    for a, b in zip(d_together, d_alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["klin", "kfc"])
def test_kfo_without_transform_adaptation_keeps_xi(name):
    model = tiny_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    rule = build(name, shapes, adapt_transform=False)
    randomize(rule, seed=10, scale=0.2)
    params = dict(model.named_parameters())
    state = rule.init(params)
    for step in range(3):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        u, state = rule(grads, state, params, step=step)
        for k, d in rule.meta_xi(shapes).items():
            for p, v in d.items():
                assert state.xi[k][p] is v
        for k, g in grads.items():
            torch.testing.assert_close(u[k], -0.01 * rule.transform(k, state.xi[k], g), rtol=0, atol=0)


def test_kfo_adapts_under_no_grad_for_evaluation():
    """Evaluation runs first order inside ``torch.no_grad``: the ξ-gradient (a torch.func.vjp) still exists."""
    model = tiny_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    rule = build("kfc", shapes, lr=0.4)
    randomize(rule, seed=11, scale=0.2)
    gen = torch.Generator().manual_seed(12)
    x, y = torch.randn(6, 2, 3, 3, generator=gen, dtype=DT), torch.randn(6, 1, generator=gen, dtype=DT)
    forward = lambda p, inp: functional_call(model, p, (inp,))
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    run = lambda: inner_loop(forward, theta0, x, y, rule=rule, geometry=Euclidean(), loss_fn=F.mse_loss,
                             steps=3, first_order=True).params
    want = run()
    with torch.no_grad():
        got = run()
    frozen = build("kfc", shapes, lr=0.4, adapt_transform=False)
    frozen.load_state_dict(rule.state_dict())
    with torch.no_grad():
        unadapted = inner_loop(forward, theta0, x, y, rule=frozen, geometry=Euclidean(), loss_fn=F.mse_loss,
                               steps=3, first_order=True).params
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-14, atol=1e-15)
    assert any(not torch.allclose(got[k], unadapted[k]) for k in want)


# ---- KFC specifics ------------------------------------------------------------------------------------


SHAPES = {"fc": torch.Size((4, 5)), "bias": torch.Size((6,)), "conv": torch.Size((3, 2, 2, 3)),
          "one": torch.Size((1,))}


def test_kfc_at_identity_init_passes_only_the_positive_part():
    """Observed: at the identity init (depth 2, normalize on) u = −α ‖g‖/(‖g‖+ε) ReLU(g): entries with a
    negative gradient get an update of exactly 0; the others get SGD's update up to the factor
    ‖g‖/(‖g‖+ε). (A single-element tensor has one map and so follows SGD, sign included.)"""
    lr, eps = 0.1, 1e-8
    rule = build("kfc", SHAPES, lr=lr)
    torch.manual_seed(13)
    grads = {k: torch.randn(s, dtype=DT) for k, s in SHAPES.items()}
    grads["one"] = torch.tensor([-0.7], dtype=DT)
    u, _ = rule(grads, rule.init(grads), grads, step=0)
    for k in ("fc", "bias", "conv"):
        g = grads[k]
        norm = torch.sqrt((g * g).sum())
        assert (g < 0).any() and (g > 0).any()
        assert torch.equal(u[k][g < 0], torch.zeros_like(u[k][g < 0]))
        torch.testing.assert_close(u[k], -lr * norm / (norm + eps) * torch.relu(g), rtol=1e-14, atol=0)
    assert len(rule.meta_xi(SHAPES)["one"]) == 3  # L0, R0, s: one map
    torch.testing.assert_close(u["one"], -lr * 0.7 / (0.7 + eps) * grads["one"], rtol=1e-14, atol=0)
    # an all-negative gradient does not move its tensor at all
    neg = {k: -g.abs() for k, g in grads.items() if k != "one"}
    sub = build("kfc", {k: SHAPES[k] for k in neg}, lr=lr)
    u, _ = sub(neg, sub.init(neg), neg, step=0)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in u.values())


def test_kfc_single_element_tensor_is_linear_in_its_gradient():
    """With ReLU between 1×1 maps a scalar's update would be c·ReLU(±g), one-directional for every ξ;
    the single map it gets instead gives u(−g) = −u(g) at any ξ."""
    rule = build("kfc", {"one": torch.Size((1,)), "fc": torch.Size((2, 3))}, depth=3)
    randomize(rule, seed=14)
    assert [len(d) for d in rule.left] == [2, 1, 1] and [len(d) for d in rule.right] == [2, 1, 1]
    g = torch.tensor([0.37], dtype=DT)
    p = {"one": g, "fc": torch.ones(2, 3, dtype=DT)}
    u_pos, _ = rule(p, rule.init(p), p, step=0)
    q = {"one": -g, "fc": torch.ones(2, 3, dtype=DT)}
    u_neg, _ = rule(q, rule.init(q), q, step=0)
    assert u_pos["one"].abs().item() > 0
    torch.testing.assert_close(u_neg["one"], -u_pos["one"], rtol=0, atol=0)


def test_kfc_normalisation_only_rescales_by_norm_over_norm_plus_eps():
    """Bias-free Kronecker maps and ReLU are positively homogeneous, so at any ξ
    s‖g‖·KFC(g/(‖g‖+ε)) = ‖g‖/(‖g‖+ε) · s·KFC(g)."""
    eps = 1e-3  # large, so the factor is visibly different from 1
    normed = build("kfc", SHAPES, eps=eps)
    randomize(normed, seed=15)
    plain = build("kfc", SHAPES, normalize=False)
    plain.load_state_dict(normed.state_dict())
    torch.manual_seed(16)
    for k, s in SHAPES.items():
        xi = normed.meta_xi([k])[k]
        g = 0.01 * torch.randn(s, dtype=DT)
        norm = torch.sqrt((g * g).sum())
        torch.testing.assert_close(normed.transform(k, xi, g), norm / (norm + eps) * plain.transform(k, xi, g),
                                   rtol=1e-12, atol=1e-15)


def test_kfc_perturbed_init():
    torch.manual_seed(17)
    a = build("kfc", SHAPES, init="perturbed", init_noise=0.01)
    torch.manual_seed(17)
    b = build("kfc", SHAPES, init="perturbed", init_noise=0.01)
    ident = build("kfc", SHAPES)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), ident.parameters(), strict=True):
        assert torch.equal(p, q), n  # reproducible from the global seed
        if n.startswith("scale."):
            assert torch.equal(p, r)  # s starts at 1 either way
        else:
            assert 0 < (p - r).abs().max() < 0.1, n
    z = build("kfc", SHAPES, init="perturbed", init_noise=0.0)
    assert all(torch.equal(p, r) for p, r in zip(z.parameters(), ident.parameters(), strict=True))


@pytest.mark.parametrize("name", ["klin", "kfc"])
def test_kfo_parameters_follow_the_model_dtype(name):
    rule = RULES[name].build(RULES[name].config(), BuildContext(SHAPES, 2, torch.float32))
    assert all(p.dtype == torch.float32 for p in rule.parameters())
    assert math.isclose(rule.lr, 0.01)


@pytest.mark.parametrize("b,n,m", [(1, 5, 784), (64, 3, 9), (1, 40, 2), (7, 6, 6)])
def test_psd_sandwich_is_the_gram_products_in_either_order(b, n, m):
    """The cheaper order per side (R then Rᵀ when m ≥ b·n, the Gram matrix otherwise) is the same map."""
    from innerloop.rules.kronecker import gram, psd_sandwich

    gen = torch.Generator().manual_seed(b * 1000 + n * 10 + m)
    left, right = (torch.randn(d, d, generator=gen, dtype=torch.float64) for d in (n, m))
    g = torch.randn(b, n, m, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(psd_sandwich(left, g, right), gram(left) @ g @ gram(right), rtol=1e-10, atol=1e-9)


def test_kfc_factors_are_plain_by_default_and_klin_keeps_psd():
    """Issue 14 item 3: the paper's KFC is L_h σ(… σ(L_1 G R_1) …) R_h with plain factors (KFC was not
    released); LᵀL G RᵀR is the released KLin's parametrisation, so KLin keeps it and KFC offers it."""
    shapes = {"w": torch.Size([3, 2])}
    plain = dict(depth=1, normalize=False)  # normalize would scale by ‖g‖/(‖g‖+ε)
    kfc, kfc_psd, klin = build("kfc", shapes, **plain), build("kfc", shapes, **plain, psd=True), build("klin", shapes)
    assert (kfc.psd, kfc_psd.psd, klin.psd) == (False, True, True)
    with torch.no_grad():  # a non-symmetric factor tells L G R from LᵀL G RᵀR
        for rule in (kfc, kfc_psd):
            rule.left[0]["w"].copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=DT))
    g = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    left = kfc.left[0]["w"].detach()
    for rule, factor in ((kfc, left), (kfc_psd, left.T @ left)):
        xi = rule.meta_xi(["w"])["w"]
        torch.testing.assert_close(rule.transform("w", xi, g), xi["s"].detach() * (factor @ g), rtol=1e-12, atol=1e-12)
