"""Meta-Curvature (Park & Oliva, 2019): a meta-learned Kronecker-factored preconditioner.

``u = −lr · MC(g)`` per tensor, with ``lr`` fixed and the factors meta-learned only (they do not
change during adaptation, so the rule is stateless):

* 0-D / 1-D tensors (bias, norm scale): ``MC(g) = m ⊙ g``, ``m`` of the tensor's shape, init 1;
* linear ``(out, in)``: ``MC(G) = M_out G M_in`` (``M_out`` is ``out × out``, ``M_in`` is
  ``in × in``), i.e. row-major ``vec(MC(G)) = (M_out ⊗ M_inᵀ) vec(G)``;
* conv ``(out, C, kh, kw)`` viewed as ``G[o, c, f]`` with ``f = kh·kw``: mode products
  ``MC(G)[o, c, f] = Σ M_out[o, a] G[a, b, e] M_in[b, c] M_f[e, f]``, i.e.
  ``vec(MC(G)) = (M_out ⊗ M_inᵀ ⊗ M_fᵀ) vec(G)``. The input and filter factors act from the
  right, as ``M_in`` does for a linear layer, so a 1×1 conv is preconditioned exactly like a
  linear layer. (Acting from the left instead is the same family: the factors are unconstrained
  and the identity is symmetric.)

All factors are identity-initialised, so the freshly built rule is plain SGD.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveFloat

from innerloop.params import per_tensor_parameters, safe_key
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule
from innerloop.rules.kronecker import mode_dims, mode_product


class MetaCurvature(UpdateRule):
    def __init__(self, shapes: dict[str, torch.Size], lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        self.lr = float(lr)
        dtype = dtype or torch.get_default_dtype()
        self.modes = {n: mode_dims(s) for n, s in shapes.items()}
        elementwise = {n: s for n, s in shapes.items() if self.modes[n] is None}
        structured = {n: self.modes[n] for n in shapes if self.modes[n] is not None}
        conv = {n: d for n, d in structured.items() if len(d) == 3}
        eye = lambda size: torch.eye(size, dtype=torch.float64)
        self.diag = per_tensor_parameters(elementwise, lambda n, s: torch.ones(s, dtype=torch.float64), dtype)
        self.m_out = per_tensor_parameters(structured, lambda n, d: eye(d[0]), dtype)
        self.m_in = per_tensor_parameters(structured, lambda n, d: eye(d[1]), dtype)
        self.m_f = per_tensor_parameters(conv, lambda n, d: eye(d[2]), dtype)

    def precondition(self, name: str, g: torch.Tensor) -> torch.Tensor:
        """``MC(g)`` for the tensor ``name`` (same shape as ``g``)."""
        key, dims = safe_key(name), self.modes[name]
        if dims is None:
            return self.diag[key] * g
        if len(dims) == 2:
            return self.m_out[key] @ g @ self.m_in[key]
        x = g.reshape(dims)
        x = mode_product(x, self.m_out[key], 0)
        x = mode_product(x, self.m_in[key].mT, 1)
        x = mode_product(x, self.m_f[key].mT, 2)
        return x.reshape(g.shape)

    def update(self, grads, state, params, *, step, **extra):
        return {k: -self.lr * self.precondition(k, g) for k, g in grads.items()}, state


class MetaCurvatureConfig(RuleConfig):
    name: Literal["meta_curvature"] = "meta_curvature"
    lr: PositiveFloat = 0.01


@register_rule("meta_curvature", MetaCurvatureConfig, sgd_equivalent={})
def _build(cfg: MetaCurvatureConfig, ctx: BuildContext) -> MetaCurvature:
    return MetaCurvature(ctx.shapes, cfg.lr, ctx.dtype)
