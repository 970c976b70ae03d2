"""One case timed in this process: the first meta-step records the meta-gradient at the initial
weights, the next ones are timed; and how far two meta-gradients are apart."""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict

import torch
from torch import Tensor

from innerloop.bench.device import peak_memory, reset_peak, synchronize
from innerloop.bench.peers.case import Config, NotInstalled, Unsupported
from innerloop.bench.peers.libraries import build, library_version


def run_case(lib: str, cfg: Config, *, repeats: int = 5, warmup: int = 1, threads: int | None = None,
             grad_out: str | None = None) -> dict:
    """Time ``repeats`` meta-steps of ``lib`` after ``warmup`` untimed ones (at least one: the first
    step also records the meta-gradient at the initial weights, saved to ``grad_out``).

    Returns a result dict; ``status`` is "ok", "not installed" or "n/a" (with a ``note``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    res = {"library": lib, "row": cfg.row, "meta_batch": cfg.meta_batch, "version": library_version(lib),
           "threads": torch.get_num_threads(), "config": asdict(cfg)}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, cfg.dtype))  # weights, data, learning rates
    try:
        return _timed(lib, cfg, res, repeats, warmup, grad_out)
    finally:
        torch.set_default_dtype(previous)


def _timed(lib: str, cfg: Config, res: dict, repeats: int, warmup: int, grad_out: str | None) -> dict:
    dev = torch.device(cfg.device)
    reset_peak(dev)
    with warnings.catch_warnings():
        # the peers' own deprecation notices (old torch APIs) are not what is measured here
        warnings.simplefilter("ignore")
        try:
            runner = build(lib, cfg)
            opt = torch.optim.Adam(runner.meta_parameters, lr=cfg.outer_lr)

            def step():
                opt.zero_grad(set_to_none=True)
                runner.meta_backward()

            step()
        except NotInstalled:
            return {**res, "status": "not installed", "note": ""}
        except Unsupported as e:
            return {**res, "status": "n/a", "note": str(e)}
        grads = {k: (v.detach().cpu().clone() if v is not None else None) for k, v in runner.named_grads().items()}
        if grad_out:
            torch.save(grads, grad_out)
        opt.step()
        for _ in range(max(warmup, 1) - 1):
            step()
            opt.step()
        times = []
        for _ in range(repeats):
            synchronize(dev)
            t = time.perf_counter()
            step()
            opt.step()
            synchronize(dev)
            times.append(time.perf_counter() - t)
    med = statistics.median(times) if times else float("nan")
    if runner.path is not None:
        res["path"] = runner.path
    return {**res, "status": "ok", "note": "", "median_s": med, "tasks_per_s": cfg.meta_batch / med,
            "times_s": times, **peak_memory(dev), "grads": grads if not grad_out else None}


def grad_diff(grads: dict[str, Tensor | None], ref: dict[str, Tensor | None]) -> tuple[float, float]:
    """``(max |g - g_ref|, that divided by max |g_ref|)`` over every tensor of ``ref`` (a missing or
    ``None`` gradient counts as zeros)."""
    if set(grads) != set(ref):
        raise ValueError(f"different gradient keys: {sorted(set(grads) ^ set(ref))}")
    diff = scale = 0.0
    for k, r in ref.items():
        g = grads[k]
        r = torch.zeros(()) if r is None else r.double()
        g = torch.zeros(()) if g is None else g.double()
        diff = max(diff, (g - r).abs().max().item())
        scale = max(scale, r.abs().max().item())
    return diff, diff / scale if scale > 0 else float("nan")


# ---- the parent: one subprocess per case ------------------------------------------------------
