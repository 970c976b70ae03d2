"""MLPLR: a per-task, per-step learning rate from the support-set information loss.

At every inner step the rule computes the information loss ``L_KD`` on the current support
forward and sets one scalar learning rate for the task and step::

    λ = lr_max − L_KD   if L_KD ≤ lr_max
    λ = lr_min          otherwise

then ``θ ← θ − λ g``. ``L_KD = KL(one_hot(y) ‖ softmax(logits))`` computed as
``kl_div(log_softmax(logits), one_hot(y), reduction="batchmean")``, which equals the support
cross-entropy. ``kl_mode``: ``"batchmean"`` (default), ``"mean"`` (divides by N·C as
``reduction="mean"`` does), ``"smoothed"`` (targets smoothed by ``kl_eps``, the literal KL with
a finite log-target). For a single-logit binary task the logit ``z`` is read as two-class logits
``[0, z]``; for regression (float targets shaped like the outputs) the information loss is the
support loss itself. λ is detached by default (``detach=False`` keeps it in the graph).

The rule has no meta-parameters; it composes with any algorithm. ``report`` gives λ and whether
the step took the ``lr_min`` branch.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import Tensor

from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule


class MLPLRState(NamedTuple):
    lr: Tensor  # λ of the last step (scalar)
    on_min: Tensor  # 1.0 if the last step took the lr_min branch, else 0.0


def information_loss(
    logits: Tensor, targets: Tensor, loss: Tensor, mode: str = "batchmean", eps: float = 0.1
) -> Tensor:
    """The support information loss ``L_KD`` (see the module docstring)."""
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        num_classes = logits.shape[-1]
        onehot = (targets.unsqueeze(-1) == torch.arange(num_classes, device=targets.device)).to(logits.dtype)
    elif logits.shape[-1] == 1 and targets.shape == logits.shape[:-1]:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        onehot = torch.stack([1 - targets, targets], dim=-1).to(logits.dtype)
        num_classes = 2
    else:
        return loss  # regression: the support loss is the only information loss there is
    logp = F.log_softmax(logits, dim=-1)
    # The pointwise terms of F.kl_div(logp, t), t·(log t − logp), written out: kl_div has no vmap
    # batching rule in torch 2.13 (a slow fallback) and warns about reduction="mean".
    if mode == "smoothed":
        onehot = (1 - eps) * onehot + eps / num_classes
    elif mode not in ("batchmean", "mean"):
        raise ValueError(f"unknown kl_mode {mode!r}")
    terms = torch.xlogy(onehot, onehot) - onehot * logp
    return terms.mean() if mode == "mean" else terms.sum() / logits.shape[0]


class MLPLR(UpdateRule):
    def __init__(self, lr_max: float, lr_min: float, *, detach: bool = True, kl_mode: str = "batchmean",
                 kl_eps: float = 0.1):
        super().__init__()
        if lr_min > lr_max:
            raise ValueError(f"MLPLR needs lr_min <= lr_max, got lr_min={lr_min}, lr_max={lr_max}")
        self.lr_max, self.lr_min = float(lr_max), float(lr_min)
        self.detach, self.kl_mode, self.kl_eps = bool(detach), kl_mode, float(kl_eps)

    def init(self, params):
        ref = next(iter(params.values()))
        return MLPLRState(ref.new_zeros(()), ref.new_zeros(()))

    def learning_rate(self, logits: Tensor, targets: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """``(λ, on_min)`` for the current support forward."""
        kd = information_loss(logits, targets, loss, self.kl_mode, self.kl_eps)
        on_min = kd > self.lr_max
        lam = torch.where(on_min, torch.full_like(kd, self.lr_min), self.lr_max - kd)
        return (lam.detach() if self.detach else lam), on_min.to(kd.dtype)

    def update(self, grads, state, params, *, step, logits, targets, loss, **extra):
        lam, on_min = self.learning_rate(logits, targets, loss)
        return {k: -lam * g for k, g in grads.items()}, MLPLRState(lam.detach(), on_min)

    def report(self, state):
        return {"lr": state.lr, "lr_min_branch": state.on_min}


class MLPLRConfig(RuleConfig):
    name: Literal["mlplr"] = "mlplr"
    lr_max: PositiveFloat = 0.5
    lr_min: NonNegativeFloat = 0.01
    detach: bool = True
    kl_mode: Literal["batchmean", "mean", "smoothed"] = "batchmean"
    kl_eps: PositiveFloat = 0.1


# never plain SGD: λ depends on the support loss
@register_rule("mlplr", MLPLRConfig, exact_gradient={"detach": False})
def _build(cfg: MLPLRConfig, ctx: BuildContext) -> MLPLR:
    return MLPLR(cfg.lr_max, cfg.lr_min, detach=cfg.detach, kl_mode=cfg.kl_mode, kl_eps=cfg.kl_eps)
