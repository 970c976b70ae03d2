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

The split of the tasks and the averaging over ranks are the :class:`~innerloop.executors.Distributed`
executor's (:mod:`innerloop.executors.distributed`); :func:`executor_for` wraps the run's executor
in it. This module owns the process group: the launch environment, its start and teardown, and
which rank writes. Outside a launch (``WORLD_SIZE`` unset or 1) every helper is a no-op for one
process.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from innerloop.executors import Distributed, Executor
from innerloop.executors.distributed import is_distributed, world_size
from innerloop.experiments.build import resolve_device
from innerloop.experiments.config import ConfigError

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


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (they are built identically from
    ``train.seed``; this guards against non-deterministic initialisation)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, Tensor):
                dist.broadcast(t, src=0)


def executor_for(executor: Executor) -> Executor:
    """The executor a run uses: ``executor`` itself in one process; under a launch with more than one
    rank, :class:`~innerloop.executors.Distributed` around it (unless it is one already)."""
    if is_distributed() and not isinstance(executor, Distributed):
        return Distributed(executor)
    return executor
