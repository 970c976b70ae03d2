"""Multi-process meta-training on ``torch.distributed``.

Launched by ``torchrun --nproc-per-node N -m innerloop train CONFIG`` (or any launcher that sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``). The scheme is plain
data parallelism over the tasks of a meta-batch:

* every rank draws the *same* meta-batch from the same generator and meta-trains on its contiguous
  slice of ``meta_batch / world_size`` tasks;
* gradients are summed over ranks and divided by the world size, so ``.grad`` equals the
  single-process mean over the whole meta-batch; every rank then takes the same optimizer step;
* evaluation splits the fixed tasks across ranks and gathers the per-task results in task order;
* rank 0 alone writes files and prints.

Outside a launch (``WORLD_SIZE`` unset or 1) every helper is a no-op for one process.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from innerloop.executors import Executor, TaskFn, resolve
from innerloop.experiments.config import ConfigError
from innerloop.types import Task

LAUNCH = "torchrun --nproc-per-node N -m innerloop train CONFIG"


# ---- the launch environment and the process group -------------------------------------------------
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launched() -> bool:
    """Whether the environment describes a multi-process launch (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0 of the process group, or of the launch
    environment when no group is initialised."""
    if is_distributed():
        return dist.get_rank() == 0
    return not launched() or _env_int("RANK", 0) == 0


def backend_for(device: torch.device) -> str:
    """gloo on the CPU, the accelerator's own backend otherwise (nccl for CUDA)."""
    if device.type == "cpu":
        return "gloo"
    if hasattr(dist, "get_default_backend_for_device"):
        return dist.get_default_backend_for_device(device)
    return "nccl"


def _use_local_device(device: torch.device) -> None:
    """Give this rank its own accelerator: device ``LOCAL_RANK`` of ``device.type``."""
    if device.index is not None:
        raise ConfigError(
            f"train.device={str(device)!r} puts every rank on one device; use {device.type!r} "
            "(each rank takes the device numbered by its LOCAL_RANK)")
    local = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "set_device"):
        return
    count = backend.device_count() if hasattr(backend, "device_count") else None
    if count is not None and local >= count:
        raise ConfigError(f"LOCAL_RANK={local} but this machine has {count} {device.type} device(s); "
                          "start at most that many processes per node")
    backend.set_device(local)


def init(device: str) -> bool:
    """Initialise the default process group from the launch environment, if there is one and no
    group exists yet; return whether this call initialised it.

    ``device`` is ``train.device``; on an accelerator each rank takes device ``LOCAL_RANK``. The
    group lives until the process exits (re-creating it in one process with the same
    ``MASTER_PORT`` can read stale addresses from the store), so several runs in one launch
    share it.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    n = _env_int("WORLD_SIZE", 1)
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={n} but this build of torch has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={n} but {', '.join(missing)} not set; launch with {LAUNCH}")
    from innerloop.experiments.build import resolve_device

    dev = resolve_device(device)
    if dev.type != "cpu":
        _use_local_device(dev)
    dist.init_process_group(backend=backend_for(dev), rank=_env_int("RANK", 0), world_size=n)
    atexit.register(cleanup)
    return True


EXIT_TIMEOUT = 60.0  # seconds a rank waits for its peers at exit


def cleanup() -> None:
    """Tear the process group down at exit, after the ranks meet: a gloo rank that destroys its group
    while a peer is still inside a collective can abort the peer ("terminate called without an active
    exception"). The meeting has a timeout and its failure is ignored, so a rank whose peer died
    still exits."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=EXIT_TIMEOUT))
        except RuntimeError:
            pass
    dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---- training -----------------------------------------------------------------------------------
def check_meta_batch(meta_batch: int, world: int | None = None) -> None:
    world = world_size() if world is None else world
    if meta_batch % world:
        raise ConfigError(f"train.meta_batch={meta_batch} is not divisible by the world size {world}; "
                          f"use a multiple of {world} or start another number of processes")


def split_batch(batch: Task, rank_: int | None = None, world: int | None = None) -> Task:
    """This rank's contiguous slice of the meta-batch (the whole batch for one process)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    check_meta_batch(batch.num_tasks, w)
    k = batch.num_tasks // w
    return batch if w == 1 else Task(*(t[r * k : (r + 1) * k] for t in batch))


def all_reduce_grads(params: list[Tensor]) -> None:
    """Make every rank's ``.grad`` the mean of the ranks' gradients.

    Each rank's :meth:`MetaAlgorithm.meta_backward` averages over its ``meta_batch / world_size``
    tasks, so the mean over ranks is the single-process mean over the whole meta-batch. A
    parameter without a gradient on some ranks counts as zero there; one without a gradient on
    every rank keeps ``grad = None`` (the optimizer skips it, as in a single process). One
    all-reduce per (device, dtype), with a has-gradient flag per parameter in the same buffer.
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


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (they are built identically from
    ``train.seed``; this guards against non-deterministic initialisation)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, Tensor):
                dist.broadcast(t, src=0)


# ---- evaluation ---------------------------------------------------------------------------------
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


# ---- the executor -----------------------------------------------------------------------------


class Distributed(Executor):
    """torchrun's data parallelism as an executor around another one (``inner``, default the loop).

    ``meta_backward``: this rank's contiguous slice of the meta-batch through ``inner``, then the
    gradients and the statistics are averaged over ranks (so ``.grad`` is the single-process mean
    over the whole meta-batch). ``map`` / ``evaluate``: this rank's share of the tasks, gathered
    in task order on every rank (on the CPU). With one process it is ``inner`` exactly.

    Not registered under a name: it wraps another executor, and ``train()`` still splits the
    meta-batch itself (using it there replaces the split / all-reduce / mean-stats lines).
    """

    name = "distributed"

    def __init__(self, inner: Executor | str = "loop", chunk: int | None = None):
        self.inner = resolve(inner, chunk=chunk)
        self.supports_checkpoint = self.inner.supports_checkpoint
        self.exact_native_norms = self.inner.exact_native_norms

    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        stats = self.inner.meta_backward(fn, state, split_batch(batch), metas)
        all_reduce_grads(metas)
        return mean_stats(stats, metas[0].device if metas else torch.device("cpu"))

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

