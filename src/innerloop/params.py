"""Helpers for parameter dictionaries."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from innerloop.types import Params

_SEP = "__"


def safe_key(name: str) -> str:
    """Map a parameter name to a key ``nn.ParameterDict`` accepts (``0.weight`` → ``0__weight``)."""
    if _SEP in name:
        raise ValueError(f"parameter name {name!r} already contains {_SEP!r}; rename the module")
    return name.replace(".", _SEP)


def unsafe_key(key: str) -> str:
    """Inverse of :func:`safe_key`."""
    return key.replace(_SEP, ".")


def named_params(module: nn.Module) -> Params:
    """``dict(module.named_parameters())`` (the tensors themselves, not copies)."""
    return dict(module.named_parameters())


def tree_map(fn: Callable[..., Tensor], *trees: Params) -> Params:
    """Apply ``fn`` key-wise over dictionaries with equal keys."""
    keys = trees[0].keys()
    return {k: fn(*(t[k] for t in trees)) for k in keys}


def per_tensor_parameters(
    shapes: dict[str, torch.Size], make: Callable[[str, torch.Size], Tensor], dtype: torch.dtype | None = None
) -> nn.ParameterDict:
    """One ``nn.Parameter`` per named tensor, created by ``make(name, shape)`` and cast to ``dtype``
    (initial values are rounded once, in the target dtype)."""
    return nn.ParameterDict({safe_key(n): nn.Parameter(make(n, s).to(dtype)) for n, s in shapes.items()})


def shapes_of(params: Params) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in params.items()}

