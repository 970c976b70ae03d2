"""Plain gradient descent with a fixed learning rate (the MAML inner loop): ``u = -lr * g``."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat

from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule


class SGD(UpdateRule):
    """``θ ← θ − lr · g`` with a fixed (not meta-learned) ``lr``."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = float(lr)

    def update(self, grads, state, params, *, step, **extra):
        return {k: -self.lr * g for k, g in grads.items()}, state


class SGDConfig(RuleConfig):
    name: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.01


@register_rule("sgd", SGDConfig, sgd_equivalent={})
def _build(cfg: SGDConfig, ctx: BuildContext) -> SGD:
    return SGD(cfg.lr)
