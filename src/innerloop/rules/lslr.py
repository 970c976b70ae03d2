"""LSLR (MAML++, Antoniou et al., 2019): one meta-learned learning rate per tensor per inner step.

``θ_l ← θ_l − α_{l,j} g_l``. Each tensor has ``num_steps + 1`` rates (as in MAML++), all
initialised to the inner ``lr``; step ``j`` uses entry ``j``. ``num_steps`` is the larger of the
training and evaluation step counts, so evaluation steps past the training count use rates that
were never trained (still the initial ``lr``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveFloat

from innerloop.params import per_tensor_parameters, safe_key
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule


class LSLR(UpdateRule):
    def __init__(self, shapes: dict[str, torch.Size], num_steps: int, lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        self.num_steps = int(num_steps)
        self.lrs = per_tensor_parameters(
            shapes, lambda n, s: torch.full((num_steps + 1,), float(lr), dtype=torch.float64),
            dtype or torch.get_default_dtype())

    def update(self, grads, state, params, *, step, **extra):
        if step > self.num_steps:
            raise ValueError(f"LSLR was built for {self.num_steps} steps but asked for step {step}")
        return {k: -self.lrs[safe_key(k)][step] * g for k, g in grads.items()}, state


class LSLRConfig(RuleConfig):
    name: Literal["lslr"] = "lslr"
    lr: PositiveFloat = 0.01


@register_rule("lslr", LSLRConfig, sgd_equivalent={})
def _build(cfg: LSLRConfig, ctx: BuildContext) -> LSLR:
    return LSLR(ctx.shapes, ctx.num_steps, cfg.lr, ctx.dtype)
