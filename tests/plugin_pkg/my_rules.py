"""A user's update rule and model, registered on import like any plugin."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat
from torch import nn

from innerloop.experiments.components import Strict, register_model
from innerloop.rules import RuleConfig, UpdateRule, register_rule


class HalfSGD(UpdateRule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr

    def update(self, grads, state, params, *, step, **extra):
        return {k: -0.5 * self.lr * g for k, g in grads.items()}, state


class HalfSGDConfig(RuleConfig):
    name: Literal["half_sgd"] = "half_sgd"
    lr: PositiveFloat = 0.01


@register_rule("half_sgd", HalfSGDConfig)
def _build(cfg: HalfSGDConfig, ctx) -> HalfSGD:
    return HalfSGD(cfg.lr)


class TinyConfig(Strict):
    name: Literal["tiny"] = "tiny"
    width: int = 4


@register_model("tiny", TinyConfig)
def _tiny(cfg: TinyConfig, family) -> nn.Module:
    return nn.Sequential(nn.Linear(family.input_shape[0], cfg.width), nn.ReLU(), nn.Linear(cfg.width,
                                                                                          family.output_dim))
