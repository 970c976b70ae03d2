"""The evaluation benchmark's problem and its two implementations, each run in the calling
process: ours (the library's own evaluation, ``evaluate_tasks`` on the path ``choose_path(algo,
"auto", device)`` picks, as training's test phase runs it) and a peer-style plain loop (functional
forward, ``torch.autograd.grad`` without ``create_graph``, query forward under ``no_grad``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop import MAML, SGD
from innerloop.bench.device import peak_memory, reset_peak, synchronize
from innerloop.bench.peers.plain import reference_forward
from innerloop.experiments.build import choose_path
from innerloop.experiments.train import evaluate_tasks
from innerloop.models import Conv4
from innerloop.types import Task

IMPLEMENTATIONS = ("ours", "plain")


@dataclass(frozen=True)
class EvalCase:
    tasks: int = 600
    steps: int = 10
    shots: int = 1
    channels: int = 64
    n_way: int = 5
    query: int = 15
    lr: float = 0.4
    batch: int = 50  # tasks per library call, the experiments' eval.batch default (a memory knob only)
    noise: float = 1.0
    device: str = "cpu"


def make_model(c: EvalCase) -> Conv4:
    """Conv4 at its seed-0 initialisation (drawn on the CPU, then moved: the same on every device)."""
    torch.manual_seed(0)
    return Conv4((1, 28, 28), c.n_way, channels=c.channels).to(c.device)


def make_tasks(c: EvalCase) -> Task:
    """``c.tasks`` synthetic tasks: each class a random 1x28x28 prototype plus Gaussian noise, so
    that adaptation changes the accuracy (on pure noise every implementation would agree trivially
    at chance). Drawn on the CPU, then moved."""
    g = torch.Generator().manual_seed(1)
    n, w = c.tasks, c.n_way
    protos = torch.rand(n, w, 1, 28, 28, generator=g)
    sy = torch.arange(w).repeat_interleave(c.shots).expand(n, -1).contiguous()
    qy = torch.arange(w).repeat_interleave(c.query).expand(n, -1).contiguous()
    sx = protos[:, sy[0]] + c.noise * torch.randn(n, w * c.shots, 1, 28, 28, generator=g)
    qx = protos[:, qy[0]] + c.noise * torch.randn(n, w * c.query, 1, 28, 28, generator=g)
    return Task(sx, sy, qx, qy).to(c.device)


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(-1) == y).to(out.dtype).mean()


def ours(c: EvalCase) -> tuple[Callable[[Task], Tensor], str]:
    """Per-task accuracies of the library's evaluation, and the path it resolved to."""
    algo = MAML(make_model(c), SGD(c.lr), loss_fn=F.cross_entropy, metric_fn=_accuracy, inner_steps=c.steps)
    algo = algo.to(c.device)
    path = choose_path(algo, "auto", torch.device(c.device))
    return (lambda tasks: evaluate_tasks(algo, tasks, path=path, batch=c.batch).metric), path


def plain(c: EvalCase) -> tuple[Callable[[Task], Tensor], None]:
    theta = [p.detach() for p in make_model(c).parameters()]

    def evaluate(tasks: Task) -> Tensor:
        accs = []
        for i in range(tasks.num_tasks):
            sx, sy, qx, qy = tasks.index(i)
            fast = [p.requires_grad_() for p in (q.detach() for q in theta)]
            for _ in range(c.steps):
                grads = torch.autograd.grad(F.cross_entropy(reference_forward(fast, sx), sy), fast)
                fast = [(p - c.lr * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)]
            with torch.no_grad():
                accs.append(_accuracy(reference_forward(fast, qx), qy))
        return torch.stack(accs)

    return evaluate, None


def run_case(impl: str, c: EvalCase, repeats: int = 1, threads: int | None = None) -> dict:
    """Time ``repeats`` evaluations of all ``c.tasks`` tasks after a warm-up on a few of them
    (with ``repeats`` 0: one untimed evaluation, for the accuracies only)."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(c.device)
    evaluate, path = {"ours": ours, "plain": plain}[impl](c)
    tasks = make_tasks(c)
    reset_peak(dev)
    evaluate(Task(*(t[: min(2, c.tasks)] for t in tasks)))  # first-call costs (allocator, kernel choice)
    times, accs = [], None
    for _ in range(max(repeats, 1)):
        synchronize(dev)
        t = time.perf_counter()
        accs = evaluate(tasks)
        synchronize(dev)
        times.append(time.perf_counter() - t)
    med = statistics.median(times) if repeats > 0 else float("nan")
    return {"impl": impl, "path": path, "shots": c.shots, "tasks": c.tasks, "steps": c.steps,
            "channels": c.channels, "threads": torch.get_num_threads(), "device": str(dev),
            "median_s": med, "tasks_per_s": c.tasks / med, "times_s": times[: max(repeats, 0)],
            **peak_memory(dev), "accuracies": accs.detach().double().cpu().tolist()}
