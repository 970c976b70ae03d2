"""The one place innerloop calls a private torch API. ``tests/test_torch_private.py`` checks that it
still exists and still answers correctly, so a torch upgrade that moves it fails that test loudly
instead of silently switching the backbones to the slow (or wrong) form."""

from __future__ import annotations

import torch
from torch import Tensor

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def functorch_wrapped(*tensors: Tensor) -> bool:
    """Whether any tensor is inside a ``torch.func`` transform (vmap / grad): the backbones then
    avoid kernels whose second-order gradients are wrong or that do not batch (docs/architecture.md)."""
    return any(_is_wrapped(t) for t in tensors)
