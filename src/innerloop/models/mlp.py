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

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class LogisticRegression(nn.Module):
    """A single linear map to one logit (the KFO paper's "LR")."""

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_dim: int, out_dim: int = 1):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


class LinNet(nn.Module):
    """LR preceded by ``layers`` linear hidden layers of ``hidden`` units and no nonlinearity (KFO's
    "LR + LinNet"): the same function class as LR, over-parameterised so MAML can shape its
    adaptation."""

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_dim: int, out_dim: int = 1, hidden: int = 64, layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.body = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)))
        self.head = nn.Linear(dims[-1], out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
