"""KFO: KLin and KFC (Arnold, Iqbal & Sha, "Decoupling adaptation from modeling with
meta-optimizers", arXiv:1910.13603; AISTATS 2021 as "When MAML can adapt fast and how to assist
when it cannot").

A learned transform ``U_ξ`` of each tensor's gradient whose parameters ``ξ`` are **themselves
adapted in the inner loop**, with the same step size ``α`` (= ``lr``) as the model::

    step 0:   u_0 = −α U_{ξ0}(g_0)
    step t>0: ξ_t = ξ_{t−1} − α ∇ξ L_support(θ_t),   u_t = −α U_{ξ_t}(g_t)

(``S`` model updates, ``S − 1`` transform updates; ``ξ0`` is meta-learned.) Because
``θ_t = θ_{t−1} − α U_ξ(g_{t−1})`` and ``g_{t−1}`` does not depend on ``ξ_{t−1}``,
``∇ξ L_support(θ_t)`` is the vector–Jacobian product of ``ξ ↦ −α U_ξ(g_{t−1})`` at ``ξ_{t−1}``
with cotangent ``g_t``, the gradient the rule receives at step ``t``. It is computed with
``torch.func.vjp``, which works in the plain loop and under ``vmap`` and composes with the outer
backward (so the meta-gradient to ``ξ0`` is second order, through the transform updates too).
Under first order (``first_order=True``) that ξ-gradient is detached, like the model gradients;
``ξ0`` still gets meta-gradients through the updates it produces.

The inner state carries ``ξ_{t−1}`` and ``g_{t−1}`` (:class:`KFOState`; before the first step
``ξ`` is the meta-parameters and ``g_prev`` zeros, so its structure never changes).

Assumptions of the ξ-gradient: the rule receives the raw support gradients (first in a chain) and
its update reaches ``θ`` unchanged (Euclidean geometry, nothing after it in a chain). Otherwise
``ξ`` is still adapted by the same formula, but it is no longer the exact ∇ξ of the support loss.

Transforms (per adapted tensor, on the matrix view of :mod:`innerloop.rules.kronecker`: a batch of
``n × m`` matrices, conv filters sharing one pair of factors):

* **KLin**: ``U(G) = L G R``, identity init, no bias; ``psd`` (default on, as released) uses
  ``LᵀL`` and ``RᵀR``.
* **KFC**: ``depth`` such maps with a ReLU between consecutive ones (no bias; plain factors
  ``L G R`` as in the paper's equation by default, ``psd`` opt-in), and with
  ``normalize`` (default) ``U(g) = s · ‖g‖ · KFC(g / (‖g‖ + ε))`` (Frobenius norm of the whole
  tensor gradient, ``ε = 1e-8``); ``s`` is a learnable per-tensor scale, init 1, adapted in the
  inner loop with the factors (it multiplies the update whether or not ``normalize`` is on).
  ``init="identity"`` (default) or ``"perturbed"``: every factor ``I + σ N(0, 1)`` with
  ``σ = init_noise`` (default ``0.01``, drawn from the global torch RNG like the model's init).

**Decision (single-element tensors)**: a tensor with one element (``n = m = 1``, e.g. the bias of
a one-output head, as in KFO's synthetic logistic regression) gets **one** map, no ReLU. With ReLU
between bias-free 1×1 maps the update would be ``c · ReLU(±g)`` for some scalar ``c``: it could
move that parameter in one direction only, for every value of ``ξ`` (not just at init), and with
``psd`` the factor before the ReLU is ``≥ 0``, so a negative gradient would never move it and its
factors would never receive a gradient. Every tensor with two or more elements gets ``depth`` maps.

Three facts about KFC worth knowing (pinned by tests/test_kronecker.py):

* at the identity init (``depth ≥ 2``) the update is ``−α s ‖g‖/(‖g‖+ε) · ReLU(g)``: only
  gradient entries that are positive move their parameter (down); entries with a negative
  gradient get an update of exactly 0 until the factors of the first map are learned (or with
  ``init="perturbed"``, where a little of the negative part leaks through the mixing);
* bias-free linear maps and ReLU are positively homogeneous, so ``‖g‖ · KFC(g/(‖g‖+ε)) =
  ‖g‖/(‖g‖+ε) · KFC(g)``: the normalisation changes the update only by that factor (≈ 1 unless
  ``‖g‖ ≲ ε``); it matters for floating-point range, not for the function computed;
* for a single-element tensor (one map, see above) the update is ``−α s l² r² g`` (``psd``): a
  learned positive step size times ``s`` (times ``‖g‖/(‖g‖+ε)`` with ``normalize``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from innerloop.params import group_by_shape, per_tensor_parameters, safe_key
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule
from innerloop.rules.kronecker import kron_sandwich, matrix_dims, psd_sandwich

Xi = dict[str, dict[str, Tensor]]  # adapted tensor name -> {"L0", "R0", ..., ["s"]}


class KFOState(NamedTuple):
    """``xi``: the transform parameters used by the latest update; ``prev``: the gradients that
    update was computed from (zeros before the first step)."""

    xi: Xi
    prev: dict[str, Tensor]


class KroneckerOptimizer(UpdateRule):
    """KLin (``depth=1``, no scale, no normalisation) and KFC; see the module docstring.

    Args:
        shapes: the adapted tensors' shapes, by parameter name.
        lr: the inner step size ``α`` (model and transform updates).
        depth: number of Kronecker maps (ReLU between consecutive maps).
        psd: use ``LᵀL`` and ``RᵀR`` instead of ``L`` and ``R``.
        normalize: gradient-norm rescaling ``‖g‖ · KFC(g / (‖g‖ + eps))``.
        scale: a learnable per-tensor scalar ``s`` (init 1) multiplying the update.
        adapt_transform: adapt ``ξ`` in the inner loop (off: ``ξ = ξ0`` throughout).
        init: ``"identity"`` or ``"perturbed"`` (identity + ``init_noise · N(0, 1)`` per entry).
    """

    supports_checkpoint = False  # the inner adaptation of ξ runs torch.func.vjp

    def __init__(
        self,
        shapes: dict[str, torch.Size],
        lr: float,
        *,
        depth: int = 1,
        psd: bool = True,
        normalize: bool = False,
        scale: bool = False,
        eps: float = 1e-8,
        adapt_transform: bool = True,
        init: Literal["identity", "perturbed"] = "identity",
        init_noise: float = 0.01,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if init not in ("identity", "perturbed"):
            raise ValueError(f"init must be 'identity' or 'perturbed', got {init!r}")
        self.lr, self.depth, self.psd = float(lr), int(depth), bool(psd)
        self.normalize, self.has_scale, self.eps = bool(normalize), bool(scale), float(eps)
        self.adapt_transform = bool(adapt_transform)
        self.dims = {n: matrix_dims(s) for n, s in shapes.items()}
        # a single-element tensor gets one map: with ReLU between 1×1 maps the update would be
        # c·ReLU(±g), able to move the parameter in one direction only, whatever ξ (module docstring)
        self.depths = {n: self.depth if n_ * m_ > 1 else 1 for n, (n_, m_) in self.dims.items()}
        dtype = dtype or torch.get_default_dtype()
        noise = float(init_noise) if init == "perturbed" else 0.0

        def factor(size: int) -> Tensor:
            eye = torch.eye(size, dtype=torch.float64)
            return eye + noise * torch.randn(size, size, dtype=torch.float64) if noise else eye

        # map i holds the factors of the tensors that have more than i maps
        maps = [{n: s for n, s in shapes.items() if self.depths[n] > i} for i in range(self.depth)]
        left = lambda n, s: factor(self.dims[n][0])
        right = lambda n, s: factor(self.dims[n][1])
        self.left = nn.ModuleList(per_tensor_parameters(sh, left, dtype) for sh in maps)
        self.right = nn.ModuleList(per_tensor_parameters(sh, right, dtype) for sh in maps)
        if self.has_scale:
            self.scale = per_tensor_parameters(shapes, lambda n, s: torch.ones((), dtype=torch.float64), dtype)

    # ---- the transform ------------------------------------------------------------------------
    def transform(self, name: str, xi: dict[str, Tensor], g: Tensor) -> Tensor:
        """``U_ξ(g)`` for the tensor ``name`` (same shape as ``g``)."""
        n, m = self.dims[name]
        x = g.reshape(-1, n, m)
        if self.normalize:
            norm = torch.linalg.vector_norm(g)  # differentiable at g = 0 (gradient 0 there)
            x = x / (norm + self.eps)
        u = self._maps(x, xi.__getitem__, self.depths[name]).reshape(g.shape)
        if self.normalize:
            u = norm * u
        if self.has_scale:
            u = xi["s"] * u
        return u

    def _maps(self, x: Tensor, factor, depth: int) -> Tensor:
        """The ``depth`` Kronecker maps with ReLU between them; ``factor("L0")`` etc. gives the factors."""
        for i in range(depth):
            if i:
                x = torch.relu(x)
            left, right = factor(f"L{i}"), factor(f"R{i}")
            x = psd_sandwich(left, x, right) if self.psd else kron_sandwich(left, x, right)
        return x

    def transform_all(self, xi: Xi, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``U_ξ(g)`` for every tensor of ``grads``: tensors of one shape as one stacked computation
        (per-tensor norms, factors and scales, so each equals :meth:`transform` up to rounding).
        A KFC step runs dozens of small matrix products per tensor; one stack for the many
        equal-shaped biases and norm parameters of a CNN saves most of their dispatch."""
        out: dict[str, Tensor] = {}
        for names in group_by_shape(grads, lambda k: grads[k].shape):
            if len(names) == 1:
                out[names[0]] = self.transform(names[0], xi[names[0]], grads[names[0]])
                continue
            shape, (n, m) = grads[names[0]].shape, self.dims[names[0]]
            x = torch.stack([grads[k].reshape(-1, n, m) for k in names])  # [G, b, n, m]
            if self.normalize:
                norm = torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True)
                x = x / (norm + self.eps)
            stacked = lambda p, names=names: torch.stack([xi[k][p] for k in names])
            x = self._maps(x, lambda p, stacked=stacked: stacked(p).unsqueeze(1), self.depths[names[0]])
            if self.normalize:
                x = norm * x
            if self.has_scale:
                x = stacked("s").reshape(-1, 1, 1, 1) * x
            out.update((k, u.reshape(shape)) for k, u in zip(names, x.unbind(0), strict=True))
        return {k: out[k] for k in grads}

    def meta_xi(self, names) -> Xi:
        """``ξ0``: the meta-parameters, arranged per adapted tensor."""
        out: Xi = {}
        for name in names:
            k = safe_key(name)
            xi = {f"L{i}": self.left[i][k] for i in range(self.depths[name])}
            xi.update({f"R{i}": self.right[i][k] for i in range(self.depths[name])})
            if self.has_scale:
                xi["s"] = self.scale[k]
            out[name] = xi
        return out

    # ---- the rule -----------------------------------------------------------------------------
    def init(self, params):
        return KFOState(self.meta_xi(params.keys()), {k: torch.zeros_like(v) for k, v in params.items()})

    def update(self, grads, state, params, *, step, first_order: bool = False, **extra):
        xi, prev = state
        if self.adapt_transform and step > 0:
            # ∇ξ L_support(θ_t) with θ_t = θ_{t−1} − α U_ξ(g_{t−1}): a VJP with cotangent g_t
            def last_update(xi_: Xi) -> dict[str, Tensor]:
                return {k: -self.lr * u for k, u in self.transform_all(xi_, prev).items()}

            _, pullback = torch.func.vjp(last_update, xi)
            (dxi,) = pullback({k: grads[k] for k in prev})
            xi = {k: {p: v - self.lr * (dxi[k][p].detach() if first_order else dxi[k][p])
                      for p, v in xk.items()} for k, xk in xi.items()}
        updates = {k: -self.lr * u for k, u in self.transform_all(xi, grads).items()}
        return updates, KFOState(xi, dict(grads))

    def report(self, state):
        if not self.has_scale:
            return {}
        return {f"scale.{k}": xk["s"] for k, xk in state.xi.items()}


# ---- configs and registration -------------------------------------------------------------------


class KLinConfig(RuleConfig):
    name: Literal["klin"] = "klin"
    lr: PositiveFloat = 0.01
    psd: bool = True
    adapt_transform: bool = True


class KFCConfig(RuleConfig):
    name: Literal["kfc"] = "kfc"
    lr: PositiveFloat = 0.01
    depth: PositiveInt = 2  # the paper: 2 for the synthetic task, 4 for CNNs
    # the paper's KFC has plain factors L_i G R_i; LᵀL / RᵀR is the released code's KLin option and
    # KFC was not released, so psd is opt-in here (KLin keeps it on, as released)
    psd: bool = False
    normalize: bool = True
    eps: PositiveFloat = 1e-8
    init: Literal["identity", "perturbed"] = "identity"
    init_noise: NonNegativeFloat = 0.01  # σ of the "perturbed" init
    adapt_transform: bool = True


@register_rule("klin", KLinConfig, sgd_equivalent={"adapt_transform": False})
def _build_klin(cfg: KLinConfig, ctx: BuildContext) -> KroneckerOptimizer:
    return KroneckerOptimizer(ctx.shapes, cfg.lr, depth=1, psd=cfg.psd, adapt_transform=cfg.adapt_transform,
                              dtype=ctx.dtype)


# one linear map, no norm rescaling (it multiplies by ‖g‖/(‖g‖+ε) ≠ 1) and a frozen transform:
# U(g) = 1 · IᵀI G IᵀI = g exactly
@register_rule("kfc", KFCConfig, sgd_equivalent={"depth": 1, "adapt_transform": False, "normalize": False})
def _build_kfc(cfg: KFCConfig, ctx: BuildContext) -> KroneckerOptimizer:
    return KroneckerOptimizer(ctx.shapes, cfg.lr, depth=cfg.depth, psd=cfg.psd, normalize=cfg.normalize,
                              scale=True, eps=cfg.eps, adapt_transform=cfg.adapt_transform, init=cfg.init,
                              init_noise=cfg.init_noise, dtype=ctx.dtype)
