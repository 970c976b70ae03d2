"""The geometry step: how an update produced by a rule turns into new parameters.

Euclidean geometry adds the update to the parameters. A mirror-descent geometry (MetaMiDA) keeps
a dual variable ``z``, adds the update there, and maps back with a learned inverse mirror map; it
implements the same three methods, so the inner loop and the algorithms need no special case.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from innerloop.types import Params


class Geometry(nn.Module):
    def init(self, params: Params) -> Any:
        """The geometry's state at the start of adaptation, from the initial parameters."""
        raise NotImplementedError

    def params(self, state: Any) -> Params:
        """The model parameters the state stands for (where gradients are taken)."""
        raise NotImplementedError

    def step(self, state: Any, updates: Params) -> Any:
        """Apply one update."""
        raise NotImplementedError


class Euclidean(Geometry):
    """``θ ← θ + u``; the state is the parameter dict itself."""

    def init(self, params: Params) -> Params:
        return dict(params)

    def params(self, state: Params) -> Params:
        return state

    def step(self, state: Params, updates: Params) -> Params:
        return {k: v + updates[k] for k, v in state.items()}
