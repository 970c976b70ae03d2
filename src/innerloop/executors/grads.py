"""How the inner loop differentiates the support loss; each executor picks one.

* :func:`autograd_value_and_grad` (``torch.autograd.grad``) for executors on plain autograd (loop,
  threads); with ``create_graph=False`` it builds no double-backward graph, which is what makes
  first order cheap;
* :func:`func_value_and_grad` (``torch.func.grad_and_value``) under ``vmap``, where
  ``torch.autograd.grad`` cannot be called.

Both compose with an outer ``backward()`` that forms the meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from innerloop.types import Params

# fn(params) -> (loss, outputs); returns (grads, loss, outputs)
ValueAndGrad = Callable[[Callable[[Params], tuple[Tensor, Tensor]], Params, bool], tuple[Params, Tensor, Tensor]]


def autograd_value_and_grad(fn, params: Params, create_graph: bool):
    with torch.enable_grad():
        p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        loss, out = fn(p)
        # retain_graph: a rule may still differentiate through the support outputs (e.g. MLPLR with
        # a non-detached learning rate); the graph is freed as soon as nothing refers to it.
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph, retain_graph=True)
    return dict(zip(p.keys(), grads, strict=True)), loss, out


def func_value_and_grad(fn, params: Params, create_graph: bool):
    grads, (loss, out) = torch.func.grad_and_value(fn, has_aux=True)(params)
    if not create_graph:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, loss, out
