"""The one private torch API innerloop uses (``innerloop/_torch_private.py``) still exists and
still tells plain tensors from ``torch.func``-wrapped ones. Fails loudly on a torch upgrade that
moves it; then port the adapter (the backbones' batch norm and max-pool depend on its answer)."""

from __future__ import annotations

import torch

from innerloop._torch_private import functorch_wrapped


def test_functorch_wrapped_answers_inside_and_outside_transforms():
    x = torch.randn(3, 2)
    assert not functorch_wrapped(x)
    seen = []

    def f(v):
        seen.append(functorch_wrapped(v))
        return (v**2).sum()

    torch.func.vmap(f)(x)
    torch.func.grad(f)(x[0])
    assert seen == [True, True]
    assert not functorch_wrapped(x, torch.zeros(1))
