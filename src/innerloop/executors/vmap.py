"""``Vmap(chunk=…)``: ``torch.func.vmap`` over the task dimension, one backward per chunk."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from innerloop import registry
from innerloop.executors.base import Executor, TaskEnv, TaskFn
from innerloop.executors.grads import func_value_and_grad
from innerloop.types import Task

ENV = TaskEnv(func_value_and_grad)


class Vmap(Executor):
    """All tasks of a chunk in one batched graph, back-propagated before the next chunk is built
    (``chunk=None``: the whole meta-batch). Random operations (Dropout) draw different numbers for
    each task (``randomness="different"``). Activation checkpointing does not compose with
    ``torch.func``, and torch's native norm kernels give wrong second-order gradients under it;
    :meth:`check` refuses both."""

    name = "vmap"
    supports_checkpoint = False
    exact_native_norms = False

    def __init__(self, chunk: int | None = None):
        if chunk is not None and chunk < 1:
            raise ValueError(f"vmap_chunk must be >= 1 or None, got {chunk}")
        self.chunk = chunk

    def map(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        per_task = lambda s, sx, sy, qx, qy: fn(s, Task(sx, sy, qx, qy), ENV)
        return torch.func.vmap(per_task, in_dims=(None, 0, 0, 0, 0), randomness="different")(state, *batch)

    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        n = batch.num_tasks
        chunk = self.chunk or n
        tot_loss = tot_metric = 0.0
        for i in range(0, n, chunk):
            part = Task(*(t[i : i + chunk] for t in batch))
            losses, metrics = self.map(fn, state, part)
            loss = losses.sum() / n
            if loss.requires_grad:
                loss.backward()
            tot_loss += losses.sum().item()
            tot_metric += metrics.sum().item()
        return {"loss": tot_loss / n, "metric": tot_metric / n}

    def __repr__(self) -> str:
        return f"Vmap(chunk={self.chunk})"


registry.register("executor", "vmap")(Vmap)
