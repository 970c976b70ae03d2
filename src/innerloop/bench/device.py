"""The benchmarks' ``--device``: check it before any case starts, wait for queued kernels before
reading the clock, and read peak memory where the device keeps it."""

from __future__ import annotations

import resource
import sys

import torch


class DeviceError(Exception):
    """The requested device does not exist on this machine (the commands print one line, exit 2)."""


def check_device(name: str) -> torch.device:
    """``torch.device(name)`` if this machine has it, else :class:`DeviceError` with the reason."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise DeviceError(f"device {name!r} is not available here (torch {torch.__version__}: "
                          f"torch.{dev.type}.is_available() is false)")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise DeviceError(f"device {name!r}: this machine has {count()} {dev.type} device(s)")
    return dev


def refuse_unavailable(name: str) -> bool:
    """Print the one-line error for a device this machine lacks (the commands then exit 2)."""
    try:
        check_device(name)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return True
    return False


def synchronize(dev: torch.device) -> None:
    """Accelerators run kernels asynchronously: without this a timer measures only the launches."""
    backend = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    sync = getattr(backend, "synchronize", None)
    if sync is not None and dev.type == "cuda":
        sync(dev)
    elif sync is not None:
        sync()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory(dev: torch.device) -> dict:
    """``peak_rss_mb`` of this process always; on CUDA also ``peak_cuda_mb``, what the tables show
    there (the tensors live in device memory, which RSS does not see)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def peak_mb(result: dict) -> float:
    """The peak memory a table shows for ``result``: device memory on CUDA, else the RSS."""
    return result.get("peak_cuda_mb", result["peak_rss_mb"])


def memory_kind(results: list[dict]) -> str:
    return ("peak CUDA memory (torch.cuda.max_memory_allocated)" if any("peak_cuda_mb" in r for r in results)
            else "peak RSS")
