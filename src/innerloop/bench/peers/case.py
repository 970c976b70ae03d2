"""The problem every library solves: the rows (shot, order, rule), a case's settings, the same
Conv4 weights and the same synthetic tasks, and what a library hands back (:class:`Runner`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from innerloop.models import Conv4
from innerloop.types import Task


@dataclass(frozen=True)
class Row:
    shot: int
    first_order: bool
    rule: str  # "sgd" (MAML) or "meta_sgd" (per-parameter learned learning rates)
    label: str


ROWS: dict[str, Row] = {
    "1shot-so": Row(1, False, "sgd", "1-shot, 2nd order"),
    "1shot-fo": Row(1, True, "sgd", "1-shot, 1st order"),
    "5shot-so": Row(5, False, "sgd", "5-shot, 2nd order"),
    "5shot-fo": Row(5, True, "sgd", "5-shot, 1st order"),
    "metasgd-1shot-so": Row(1, False, "meta_sgd", "Meta-SGD, 1-shot, 2nd order"),
}


@dataclass(frozen=True)
class Config:
    """One benchmark case apart from the library."""

    row: str = "1shot-so"
    meta_batch: int = 8
    steps: int = 5
    lr: float = 0.4
    channels: int = 64
    n_way: int = 5
    query: int = 15
    outer_lr: float = 1e-3
    dtype: str = "float32"  # of weights and data (float64 tells rounding from real differences)
    device: str = "cpu"

    @property
    def spec(self) -> Row:
        return ROWS[self.row]


def tiny_config(**kw) -> Config:
    """A configuration small enough for tests (2 tasks, 1 inner step, 4 channels)."""
    return replace(Config(meta_batch=2, steps=1, channels=4), **kw)


class Unsupported(Exception):
    """The library cannot express this case (reported as "n/a")."""


class NotInstalled(Exception):
    """The library is not importable here (reported as "not installed")."""


class Runner(NamedTuple):
    """A library's meta-step for one case."""

    meta_parameters: list[Tensor]  # what Adam updates
    meta_backward: Callable[[], None]  # accumulate the meta-gradient of the mean query loss
    named_grads: Callable[[], dict[str, Tensor]]  # θ0 grads by our names; "alpha:<name>" for Meta-SGD
    path: str | None = None  # ours: the execution path it resolved to ("auto" is resolved in the case's process)


def make_problem(cfg: Config) -> tuple[Conv4, Task]:
    """Our Conv4 at its seed-0 initialisation and a synthetic meta-batch (same seeds as ``innerloop.bench``),
    drawn in float32 on the CPU whatever ``cfg`` says and then cast and moved, so that a float64 or
    CUDA case solves the same problem as the float32 CPU one."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        shot, n_way, q, b = cfg.spec.shot, cfg.n_way, cfg.query, cfg.meta_batch
        model = Conv4((1, 28, 28), n_way, channels=cfg.channels)
        sx = torch.rand(b, n_way * shot, 1, 28, 28, generator=g)
        qx = torch.rand(b, n_way * q, 1, 28, 28, generator=g)
    finally:
        torch.set_default_dtype(previous)
    sy = torch.arange(n_way).repeat_interleave(shot).expand(b, -1).contiguous()
    qy = torch.arange(n_way).repeat_interleave(q).expand(b, -1).contiguous()
    dtype = getattr(torch, cfg.dtype)
    model = model.to(device=cfg.device, dtype=dtype)
    return model, Task(sx.to(cfg.device, dtype), sy, qx.to(cfg.device, dtype), qy).to(cfg.device)


class PlainConv4(nn.Module):
    """The same network as ``Conv4`` built from stock layers (``nn.BatchNorm2d`` without running
    statistics, so it always normalises with the batch statistics), for the peer libraries."""

    def __init__(self, channels: int, n_way: int, features: int, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for _ in range(depth):
            layers += [nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels, track_running_stats=False),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c = channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(features, n_way)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def plain_copy(model: Conv4, cfg: Config) -> PlainConv4:
    """A :class:`PlainConv4` holding a copy of ``model``'s weights (parameters in the same order)."""
    src0 = next(model.parameters())
    plain = PlainConv4(cfg.channels, cfg.n_way, model.head.in_features).to(src0.device, src0.dtype)
    with torch.no_grad():
        for (name, src), dst in zip(model.named_parameters(), plain.parameters(), strict=True):
            if src.shape != dst.shape:
                raise RuntimeError(f"{name}: shape {tuple(src.shape)} vs {tuple(dst.shape)} in the plain copy")
            dst.copy_(src)
    return plain


def param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def grads_by_name(names: list[str], params, alphas=None) -> dict[str, Tensor]:
    out = {n: p.grad for n, p in zip(names, params, strict=True)}
    if alphas is not None:
        out.update({f"alpha:{n}": a.grad for n, a in zip(names, alphas, strict=True)})
    return out
