"""Fully connected models: MLP (sine regression), logistic regression and LinNet (synthetic linear).

Every model has a ``body`` (feature extractor, possibly empty) and a ``head`` (the last linear
layer), which is what ANIL adapts.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """``in → hidden[0] → … → hidden[-1] → out`` with ReLU between layers (none on the output)."""

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, flatten: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class LogisticRegression(nn.Module):
    """A single linear map to the logits (the KFO paper's "LR"); ``flatten`` takes images as vectors
    (KFO's Omniglot LR, 784 → 5)."""

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_dim: int, out_dim: int = 1, flatten: bool = False):
        super().__init__()
        self.body = nn.Flatten() if flatten else nn.Identity()
        self.head = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class LinNet(nn.Module):
    """LR preceded by ``layers`` linear hidden layers of ``hidden`` units and no nonlinearity (KFO's
    "LR + LinNet"): the same function class as LR, over-parameterised so MAML can shape its
    adaptation."""

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_dim: int, out_dim: int = 1, hidden: int | Sequence[int] = 64, layers: int = 3,
                 flatten: bool = False):
        super().__init__()
        # KFO's Omniglot LinNet has widths 256-128-64-64; the synthetic one ``layers`` × 64
        widths = [hidden] * layers if isinstance(hidden, int) else list(hidden)
        dims = [in_dim, *widths]
        linears = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        self.body = nn.Sequential(*([nn.Flatten()] if flatten else []), *linears)
        self.head = nn.Linear(dims[-1], out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
