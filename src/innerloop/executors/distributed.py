"""``Distributed(inner)``: torchrun's data parallelism over the tasks of a meta-batch, around any
other executor.

Every rank holds the *same* meta-batch (drawn from the same generator); ``meta_backward`` runs this
rank's contiguous slice of ``meta_batch / world_size`` tasks through ``inner``, then averages the
gradients and the statistics over ranks, so ``.grad`` is the single-process mean over the whole
meta-batch and every rank can take the same optimizer step. ``map`` / ``evaluate`` run this rank's
share of the tasks (sizes may differ by one) and gather the results in task order on every rank
(on the CPU). With one process (no process group, or a group of one) it is ``inner`` exactly.

The process group itself (launch environment, start, teardown, who writes files) is
:mod:`innerloop.experiments.distributed`'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils._pytree import tree_map

from innerloop import registry
from innerloop.executors.base import Executor, TaskFn, resolve
from innerloop.types import Task


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def split_batch(batch: Task, rank_: int | None = None, world: int | None = None) -> Task:
    """This rank's contiguous slice of the meta-batch (the whole batch for one process)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if batch.num_tasks % w:
        raise ValueError(f"a meta-batch of {batch.num_tasks} tasks does not split evenly over {w} ranks")
    k = batch.num_tasks // w
    return batch if w == 1 else Task(*(t[r * k : (r + 1) * k] for t in batch))


def all_reduce_grads(params: list[Tensor]) -> None:
    """Make every rank's ``.grad`` the mean of the ranks' gradients.

    Each rank's executor averages over its ``meta_batch / world_size`` tasks, so the mean over ranks
    is the single-process mean over the whole meta-batch. A parameter without a gradient on some
    ranks counts as zero there; one without a gradient on every rank keeps ``grad = None`` (the
    optimizer skips it, as in a single process). One all-reduce per (device, dtype), with a
    has-gradient flag per parameter in the same buffer.
    """
    if not is_distributed() or not params:
        return
    w = world_size()
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), ps in groups.items():
        flat = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=dtype)
             for p in ps]
            + [torch.tensor([float(p.grad is not None) for p in ps], device=device, dtype=dtype)]
        )
        dist.all_reduce(flat)
        has_grad = flat[-len(ps):].tolist()
        offset = 0
        for p, flag in zip(ps, has_grad, strict=True):
            g = flat[offset : offset + p.numel()].view_as(p).div_(w)
            offset += p.numel()
            if flag < 0.5:
                p.grad = None
            elif p.grad is not None:
                p.grad.copy_(g)
            else:
                p.grad = g.clone()


def mean_stats(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over ranks (every rank has the same number of tasks)."""
    if not is_distributed():
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / world_size()).tolist(), strict=True))


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous share ``[lo, hi)`` of ``n`` items (sizes differ by at most one)."""
    r, w = rank(), world_size()
    return n * r // w, n * (r + 1) // w


def gather_list(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order; tensors come back on the CPU."""
    if not is_distributed():
        return items
    local = tree_map(lambda x: x.detach().cpu() if isinstance(x, Tensor) else x, items)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return [x for part in parts for x in part]


class Distributed(Executor):
    """torchrun's data parallelism as an executor around another one (``inner``, default the loop).

    Registered as ``"distributed"`` (``Distributed("loop")``); ``train()`` wraps whatever executor
    it runs in one of these when the process group has more than one rank
    (:func:`innerloop.experiments.distributed.executor_for`)."""

    name = "distributed"

    def __init__(self, inner: Executor | str = "loop", chunk: int | None = None):
        self.inner = resolve(inner, chunk=chunk)
        self.supports_checkpoint = self.inner.supports_checkpoint
        self.exact_native_norms = self.inner.exact_native_norms

    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        stats = self.inner.meta_backward(fn, state, split_batch(batch), metas)
        all_reduce_grads(metas)
        # the batch's device, not a parameter's: a run may have nothing to meta-learn (random init)
        return mean_stats(stats, batch.query_y.device)

    def map(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        lo, hi = shard(batch.num_tasks)
        mine = [self.inner.map(fn, state, Task(*(t[lo:hi] for t in batch)))] if hi > lo else []
        parts = gather_list(mine)
        return tree_map(lambda *xs: torch.cat(xs), *parts)

    def evaluate(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        with torch.no_grad():
            return self.map(fn, state, batch)

    def __repr__(self) -> str:
        return f"Distributed(inner={self.inner!r})"


registry.register("executor", "distributed")(Distributed)
