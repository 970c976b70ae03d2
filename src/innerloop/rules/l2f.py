"""L2F alone (Baik et al., CVPR 2020, "Learning to Forget"): plain SGD steps from a per-task attenuated
initialisation — ALFA Tables 1 and 2's "MAML + L2F" rows, i.e. ALFA's ``l2f`` option without ALFA.

Before the first step ``θ0_l ← γ_l θ0_l`` with ``γ = sigmoid(MLP([mean(g_1) … mean(g_N)]))`` and
``g`` the support gradient at ``θ0`` (the attenuator of :class:`~innerloop.rules.alfa.ALFA`, same shape
and initialisation: PyTorch's as released, or with ``init="constant"`` ``γ`` near ``gamma_init``); then
``θ ← θ − lr · g`` for every step.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveFloat

from innerloop.rules.alfa import attenuator, grad_means
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule
from innerloop.types import Params


class L2F(UpdateRule):
    def __init__(self, names: list[str], lr: float, *, init: str = "released", gamma_init: float = 0.99,
                 detach_grad_input: bool = False,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if not names:
            raise ValueError("L2F needs at least one inner-adapted tensor")
        self.names, self.lr, self.detach_grad_input = list(names), float(lr), bool(detach_grad_input)
        self.built_for = dict.fromkeys(self.names)
        start = gamma_init if init == "constant" else None
        self.attenuator = attenuator(len(self.names), start, dtype or torch.get_default_dtype())
        self.adjusts_init = True

    def gamma(self, grads: Params) -> torch.Tensor:
        return torch.sigmoid(self.attenuator(grad_means(grads, self.names, self.detach_grad_input)))

    def adjust_init(self, params: Params, grads: Params, state) -> Params:
        gamma = self.gamma(grads)
        return {k: gamma[self.names.index(k)] * v if k in self.names else v for k, v in params.items()}

    def update(self, grads, state, params, *, step, **extra):
        return {k: -self.lr * g for k, g in grads.items()}, state


class L2FConfig(RuleConfig):
    name: Literal["l2f"] = "l2f"
    lr: PositiveFloat = 0.01
    init: Literal["released", "constant"] = "released"  # PyTorch's init as released, or γ starting at gamma_init
    gamma_init: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    detach_grad_input: bool = False


# γ < 1 scales θ0 before the first step, so no setting gives plain SGD
@register_rule("l2f", L2FConfig, sgd_equivalent=None)
def _build(cfg: L2FConfig, ctx: BuildContext) -> L2F:
    return L2F(list(ctx.shapes), cfg.lr, init=cfg.init, gamma_init=cfg.gamma_init,
               detach_grad_input=cfg.detach_grad_input, dtype=ctx.dtype)
