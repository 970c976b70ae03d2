"""The single inner loop every algorithm and rule goes through: ``grads → rule → geometry``.

Gradients of the support loss are taken by a pluggable ``value_and_grad``, chosen by the executor
that runs the task (:mod:`innerloop.executors.grads`); both kinds compose with an outer
``backward()`` that forms the meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from innerloop.executors.grads import ValueAndGrad, autograd_value_and_grad, func_value_and_grad
from innerloop.geometry import Geometry
from innerloop.rules.base import UpdateRule
from innerloop.types import InnerResult, Params

__all__ = ["Forward", "LossFn", "ValueAndGrad", "autograd_value_and_grad", "func_value_and_grad", "inner_loop"]

Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def inner_loop(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    rule: UpdateRule,
    geometry: Geometry,
    loss_fn: LossFn,
    steps: int,
    first_order: bool,
    value_and_grad: ValueAndGrad = autograd_value_and_grad,
    second_order_steps: int | None = None,
    checkpoint: bool = False,
) -> InnerResult:
    """Adapt ``params`` to the support set ``(x, y)`` with ``steps`` steps of ``rule``.

    ``forward(params, x)`` returns model outputs; only the tensors in ``params`` are adapted.
    With ``first_order`` the support gradients are cut from the graph (FOMAML); the path from the
    rule's meta-parameters to the adapted weights is kept either way.

    Memory controls (both leave the forward numbers unchanged):

    * ``second_order_steps = k``: only the last ``k`` steps keep the second-order terms (the
      earlier steps are first order), so only ``k`` double-backward graphs are built;
    * ``checkpoint``: each step's activations are freed after the step and recomputed in the
      backward pass (``torch.utils.checkpoint``), trading one more forward per step for memory
      that no longer grows with the activations of every step. Loop path only (the vmap path's
      ``torch.func`` transforms do not compose with it).
    """
    if second_order_steps is not None and second_order_steps < 0:
        raise ValueError(f"second_order_steps must be >= 0 or None, got {second_order_steps}")
    rstate = rule.init(params)

    def support_loss(p_: Params) -> tuple[Tensor, Tensor]:
        out = forward(p_, x)
        return loss_fn(out, y), out

    if rule.adjusts_init:
        grads, _, _ = value_and_grad(support_loss, params, not first_order)
        params = rule.adjust_init(params, grads, rstate)
    gstate = geometry.init(params)
    losses: list[Tensor] = []
    traces: list[dict[str, Tensor]] = []

    def one_step(step: int, gstate, rstate, fo: bool):
        p = geometry.params(gstate)
        grads, loss, out = value_and_grad(support_loss, p, not fo)
        updates, rstate = rule(grads, rstate, p, step=step, loss=loss, logits=out, targets=y, first_order=fo)
        gnorm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads.values()))
        return geometry.step(gstate, updates), rstate, loss.detach(), gnorm

    for step in range(steps):
        fo = first_order or (second_order_steps is not None and step < steps - second_order_steps)
        if checkpoint and torch.is_grad_enabled():
            gstate, rstate, loss, gnorm = _checkpointed(one_step, step, gstate, rstate, fo)
        else:
            gstate, rstate, loss, gnorm = one_step(step, gstate, rstate, fo)
        losses.append(loss)
        traces.append({"support_grad_norm": gnorm, **{k: v.detach() for k, v in rule.report(rstate).items()}})
    support_losses = torch.stack(losses) if losses else x.new_zeros(0)
    trace = {k: torch.stack([t[k] for t in traces]) for k in (traces[0] if traces else {})}
    return InnerResult(geometry.params(gstate), support_losses, trace)


def _checkpointed(one_step, step: int, gstate, rstate, fo: bool):
    """``one_step`` under non-reentrant activation checkpointing: its saved activations are dropped
    and recomputed when the backward pass reaches them."""
    leaves, spec = tree_flatten((gstate, rstate))
    is_t = [isinstance(v, Tensor) for v in leaves]
    tensors = [v for v, t in zip(leaves, is_t, strict=True) if t]
    out_spec = []

    def fn(*ts):
        it = iter(ts)
        g, r = tree_unflatten([next(it) if t else v for v, t in zip(leaves, is_t, strict=True)], spec)
        res = one_step(step, g, r, fo)
        flat, sp = tree_flatten(res)
        out_spec.append(sp)
        return tuple(flat)

    flat = torch.utils.checkpoint.checkpoint(fn, *tensors, use_reentrant=False)
    return tree_unflatten(list(flat), out_spec[0])
