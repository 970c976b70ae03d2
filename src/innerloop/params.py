"""Helpers for parameter dictionaries."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

_SEP = "__"


def group_by_shape(names: Iterable[str], shape_of: Callable[[str], tuple]) -> list[list[str]]:
    """``names`` grouped by ``shape_of(name)``, in order of first appearance (the rules and the
    mirror map compute the tensors of one group as one stack)."""
    groups: dict[tuple, list[str]] = {}
    for n in names:
        groups.setdefault(tuple(shape_of(n)), []).append(n)
    return list(groups.values())


def safe_key(name: str) -> str:
    """Map a parameter name to a key ``nn.ParameterDict`` accepts (``0.weight`` → ``0__weight``)."""
    if _SEP in name:
        raise ValueError(f"parameter name {name!r} already contains {_SEP!r}; rename the module")
    return name.replace(".", _SEP)


def per_tensor_parameters(
    shapes: dict[str, torch.Size], make: Callable[[str, torch.Size], Tensor], dtype: torch.dtype | None = None
) -> nn.ParameterDict:
    """One ``nn.Parameter`` per named tensor, created by ``make(name, shape)`` and cast to ``dtype``
    (initial values are rounded once, in the target dtype)."""
    return nn.ParameterDict({safe_key(n): nn.Parameter(make(n, s).to(dtype)) for n, s in shapes.items()})
