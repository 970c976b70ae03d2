"""Meta-SGD (Li et al., 2017): a meta-learned learning rate for every parameter element.

``θ ← θ − α ⊙ g`` with ``α`` of the same shape as ``θ``. ``α`` is stored as is (unconstrained,
it may change sign, as in the paper) and initialised to the inner ``lr``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveFloat

from innerloop.params import per_tensor_parameters, safe_key
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule


class MetaSGD(UpdateRule):
    def __init__(self, shapes: dict[str, torch.Size], lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        self.alpha = per_tensor_parameters(shapes, lambda n, s: torch.full(s, float(lr), dtype=torch.float64),
                                           dtype or torch.get_default_dtype())

    def update(self, grads, state, params, *, step, **extra):
        return {k: -self.alpha[safe_key(k)] * g for k, g in grads.items()}, state


class MetaSGDConfig(RuleConfig):
    name: Literal["meta_sgd"] = "meta_sgd"
    lr: PositiveFloat = 0.01


@register_rule("meta_sgd", MetaSGDConfig, sgd_equivalent={})
def _build(cfg: MetaSGDConfig, ctx: BuildContext) -> MetaSGD:
    return MetaSGD(ctx.shapes, cfg.lr, ctx.dtype)
