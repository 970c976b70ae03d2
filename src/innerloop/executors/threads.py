"""``Threads``: the loop's per-task work on a pool of threads, one per torch intra-op thread.

Few-shot tasks are too small for intra-op parallelism to pay, while independent tasks keep every
core busy: each worker runs single-threaded kernels on its own tasks, takes
``torch.autograd.grad`` of its task's loss, and the per-task meta-gradients are summed in task
order (as the loop's successive ``backward()`` calls do), so the numbers do not depend on which
worker ran which task. Peak memory: one task's graph per worker.

Dropout in a worker draws from torch's global generator, shared by the workers: every task gets
different numbers, but which numbers depends on the scheduling (not reproducible run to run).
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from innerloop import registry
from innerloop.executors.base import Executor, TaskEnv, TaskFn, stack_rows
from innerloop.executors.grads import autograd_value_and_grad
from innerloop.types import Task

_tls = threading.local()


def worker_module(module: nn.Module) -> nn.Module:
    """A private copy of ``module`` for the calling worker thread: ``functional_call`` swaps a
    module's tensors while it runs, so two threads must not share one module. The copy's own
    tensors are never read (every parameter and buffer is passed in), so it copies the structure
    only. The cache lives as long as the worker thread, i.e. one meta-batch."""
    cache = _tls.__dict__.setdefault("modules", {})
    hit = cache.get(id(module))
    if hit is None or hit[0] is not module:
        memo = {id(t): nn.Parameter(t.new_empty(0), requires_grad=t.requires_grad) for t in module.parameters()}
        memo.update({id(b): b.new_empty(0) for b in module.buffers()})
        hit = cache[id(module)] = (module, copy.deepcopy(module, memo))
    return hit[1]


ENV = TaskEnv(autograd_value_and_grad, worker_module)


def _worker_init() -> None:
    torch.set_num_threads(1)


@contextmanager
def _task_pool():
    """A pool with one worker per intra-op thread; kernels run single-threaded meanwhile."""
    n = torch.get_num_threads()
    with ThreadPoolExecutor(max_workers=n, initializer=_worker_init) as pool:
        torch.set_num_threads(1)
        try:
            yield pool
        finally:
            torch.set_num_threads(n)


class Threads(Executor):
    name = "threads"

    def map(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        grad_mode = torch.is_grad_enabled()  # thread-local: carry the caller's into the workers

        def one(i):
            with torch.set_grad_enabled(grad_mode):
                return fn(state, batch.index(i), ENV)

        with _task_pool() as pool:
            return stack_rows(list(pool.map(one, range(batch.num_tasks))))

    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        n = batch.num_tasks

        def one(i):
            loss, metric = fn(state, batch.index(i), ENV)
            grads = (torch.autograd.grad(loss / n, metas, allow_unused=True) if loss.requires_grad and metas
                     else (None,) * len(metas))
            return loss.item(), metric.item(), grads

        with _task_pool() as pool:
            rows = list(pool.map(one, range(n)))
        # accumulate in task order, as the loop's successive backward() calls do
        for j, p in enumerate(metas):
            for _, _, grads in rows:
                g = grads[j]
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad += g
        return {"loss": sum(r[0] for r in rows) / n, "metric": sum(r[1] for r in rows) / n}


registry.register("executor", "threads")(Threads)
