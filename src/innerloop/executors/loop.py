"""``Loop``: tasks one after another on the calling thread, plain autograd."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from innerloop import registry
from innerloop.executors.base import Executor, TaskEnv, TaskFn, stack_rows
from innerloop.executors.grads import autograd_value_and_grad
from innerloop.types import Task

ENV = TaskEnv(autograd_value_and_grad)


class Loop(Executor):
    """Each task's query loss is back-propagated as soon as it exists, so one task's graph is alive
    at a time (the smallest peak memory)."""

    name = "loop"

    def map(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        return stack_rows([fn(state, batch.index(i), ENV) for i in range(batch.num_tasks)])

    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        n = batch.num_tasks
        tot_loss = tot_metric = 0.0
        for i in range(n):
            loss, metric = fn(state, batch.index(i), ENV)
            if loss.requires_grad:
                (loss / n).backward()
            tot_loss += loss.item()
            tot_metric += metric.item()
        return {"loss": tot_loss / n, "metric": tot_metric / n}


registry.register("executor", "loop")(Loop)
