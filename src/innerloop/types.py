"""Plain containers that pass through ``torch.func.vmap``.

Parameters are ``dict[str, Tensor]`` keyed like ``named_parameters()``. Batches and inner-loop
states are NamedTuples (vmap flattens them as pytrees; dataclasses do not pass through it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]


class Task(NamedTuple):
    """One task, or a meta-batch of tasks when every field has a leading task dimension ``[B, ...]``.

    Shapes for a single task: ``support_x [Ns, *in]``, ``support_y [Ns, *out]``,
    ``query_x [Nq, *in]``, ``query_y [Nq, *out]``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device | str) -> Task:
        return Task(*(t.to(device) for t in self))

    def index(self, i: int) -> Task:
        """Task ``i`` of a meta-batch."""
        return Task(*(t[i] for t in self))

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]


class InnerResult(NamedTuple):
    """What the inner loop returns for one task.

    ``params``: adapted parameters; ``support_losses``: support loss before each step ``[S]``;
    ``trace``: per-step scalars (name → ``[S]``): ``support_grad_norm`` (the support gradient's
    norm over the adapted tensors, before each step) and whatever the rule chose to report.
    """

    params: Params
    support_losses: Tensor
    trace: dict[str, Tensor]
