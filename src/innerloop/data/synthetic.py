"""Synthetic task families: sine regression (ALFA / MAML protocols) and KFO's linear binary task.

A task family samples meta-batches from a ``torch.Generator`` (whose state goes into
checkpoints, so resumed runs see the same tasks) and knows its loss and metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop.types import Task


class PointSource:
    """More labelled points from a fixed set of tasks (the tasks' parameters are kept).

    ``draw(num, generator)`` returns ``(x [n, m, *in], y [n, m, *out])``. Synthetic families give
    ``m = num`` fresh points per task from the task's input distribution, labelled by that task
    (unbalanced, like a query set); image families give other images of the task's classes,
    balanced, ``m`` capped by what the classes hold (:class:`~innerloop.data.episodes.FewShotImages`).
    ``source[i:j]`` is the source of tasks ``i..j-1``.
    """

    def __init__(self, draw_fn: Callable[[tuple[Tensor, ...], int, torch.Generator], tuple[Tensor, Tensor]],
                 params: tuple[Tensor, ...]):
        self.draw_fn, self.params = draw_fn, params

    def __len__(self) -> int:
        return self.params[0].shape[0]

    def __getitem__(self, idx: slice) -> PointSource:
        if not isinstance(idx, slice):
            raise TypeError("index a PointSource with a slice (source[i:i + 1] for one task)")
        return PointSource(self.draw_fn, tuple(p[idx] for p in self.params))

    def draw(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.draw_fn(self.params, int(num), generator)


class TaskFamily:
    """Interface: ``sample(n, generator) -> Task`` with a leading task dimension."""

    #: name of the reported metric and whether larger is better
    metric_name: str = "metric"
    higher_is_better: bool = True
    input_shape: tuple[int, ...] = ()
    output_dim: int = 1

    def sample(self, n: int, generator: torch.Generator) -> Task:
        raise NotImplementedError

    def for_split(self, split: str) -> TaskFamily:
        """The family of ``split`` ("train", "val", "test"). Synthetic families have one task
        distribution (splits differ by seed only); image families switch to that split's classes."""
        return self

    def fixed_tasks(self, n: int, seed: int) -> Task:
        """``n`` tasks fixed by ``seed`` (validation and test sets)."""
        return self.sample(n, torch.Generator().manual_seed(seed))

    def sample_with_source(self, n: int, generator: torch.Generator) -> tuple[Task, PointSource]:
        """The tasks :meth:`sample` draws from ``generator`` (the same tensors, the same use of
        the generator) and a :class:`PointSource` of more labelled points from those same tasks."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw more points from a sampled task")

    def fixed_tasks_with_source(self, n: int, seed: int) -> tuple[Task, PointSource]:
        """:meth:`fixed_tasks` plus a :class:`PointSource` for those tasks."""
        return self.sample_with_source(n, torch.Generator().manual_seed(seed))

    @staticmethod
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def metric(outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


def _uniform(gen: torch.Generator, shape, lo: float, hi: float) -> Tensor:
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


class Sine(TaskFamily):
    """Sine regression.

    ``form="alfa"`` (ALFA Table 8): ``y = A sin(ω x + b)``, A∈[0.1, 5], ω∈[0.8, 1.2], b∈[0, π].
    ``form="maml"`` (Finn et al.): ``y = A sin(x − φ)``, A∈[0.1, 5], φ∈[0, π].
    x∈[−5, 5]; ``k_shot`` support points, ``query`` query points; metric = query MSE.
    Shapes: x and y are ``[n, K, 1]``.
    """

    metric_name = "mse"
    higher_is_better = False
    input_shape = (1,)
    output_dim = 1

    def __init__(self, k_shot: int = 5, query: int = 100, form: Literal["alfa", "maml"] = "alfa"):
        if form not in ("alfa", "maml"):
            raise ValueError(f"sine form must be 'alfa' or 'maml', got {form!r}")
        self.k_shot, self.query, self.form = int(k_shot), int(query), form

    def _task_params(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Amplitude, frequency and phase, each ``[n, 1, 1]``."""
        amp = _uniform(generator, (n, 1, 1), 0.1, 5.0)
        if self.form == "alfa":
            freq = _uniform(generator, (n, 1, 1), 0.8, 1.2)
            phase = _uniform(generator, (n, 1, 1), 0.0, math.pi)
        else:
            freq = torch.ones(n, 1, 1)
            phase = -_uniform(generator, (n, 1, 1), 0.0, math.pi)
        return amp, freq, phase

    @staticmethod
    def _points(params: tuple[Tensor, ...], num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        amp, freq, phase = params
        x = _uniform(generator, (amp.shape[0], num, 1), -5.0, 5.0)
        return x, amp * torch.sin(freq * x + phase)

    def sample_with_source(self, n: int, generator: torch.Generator) -> tuple[Task, PointSource]:
        params = self._task_params(n, generator)
        x, y = self._points(params, self.k_shot + self.query, generator)
        k = self.k_shot
        return Task(x[:, :k], y[:, :k], x[:, k:], y[:, k:]), PointSource(self._points, params)

    def sample(self, n: int, generator: torch.Generator) -> Task:
        return self.sample_with_source(n, generator)[0]

    @staticmethod
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)

    metric = loss


class LinearBinary(TaskFamily):
    """KFO §3.2 and App. A.1.1: ``w ~ N(0, I_d)`` per task, ``x ~ N(0, I_d)``, label ``1[wᵀx > 0]``; BCE loss.

    The paper draws 1,000 points per task, from both sides of the boundary, and does not say how they
    are split: the default is 500 support and 500 query points. Both sets are balanced (half the
    points per label) when ``balanced`` (the default): points are drawn from N(0, I) and those on the
    wrong side are negated, which keeps each point N(0, I) given its label. ``balanced=False`` draws
    the query set as is. Shapes: x ``[n, N, d]``, y ``[n, N]`` (float 0/1).

    ``subspace=r`` (not in the paper; our variant) draws ``w = U z`` with ``z ~ N(0, I_r)`` and a
    fixed random orthonormal ``U`` (``d × r``, from ``subspace_seed``): tasks then share structure.
    """

    metric_name = "accuracy"
    higher_is_better = True
    output_dim = 1

    def __init__(self, dim: int = 100, support: int = 500, query: int = 500, subspace: int | None = None,
                 subspace_seed: int = 0, balanced: bool = True):
        for what, n in (("support", support), ("query", query)):
            if balanced and n % 2:
                raise ValueError(f"linear task {what} size must be even (balanced labels), got {n}")
        self.dim, self.support, self.query, self.balanced = int(dim), int(support), int(query), bool(balanced)
        self.input_shape = (self.dim,)
        self.basis = None
        if subspace is not None:
            if not 1 <= subspace <= dim:
                raise ValueError(f"subspace must be between 1 and dim={dim}, got {subspace}")
            g = torch.Generator().manual_seed(subspace_seed)
            self.basis = torch.linalg.qr(torch.randn(dim, subspace, generator=g)).Q  # [d, r]

    @staticmethod
    def _points(params: tuple[Tensor, ...], num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``num`` points per task drawn as the query set is: x ~ N(0, I), label 1[wᵀx > 0]."""
        (w,) = params
        x = torch.randn(w.shape[0], num, w.shape[1], generator=generator)
        return x, (torch.einsum("nkd,nd->nk", x, w) > 0).float()

    @staticmethod
    def _balanced(w: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``num`` points per task, the first half labelled 1 and the second 0 (each point N(0, I) given its label)."""
        x = torch.randn(w.shape[0], num, w.shape[1], generator=generator)
        want = torch.ones(w.shape[0], num)
        want[:, num // 2 :] = -1.0
        side = torch.sign(torch.einsum("nkd,nd->nk", x, w))
        side[side == 0] = 1.0
        return x * (side * want).unsqueeze(-1), (want > 0).float()

    def sample_with_source(self, n: int, generator: torch.Generator) -> tuple[Task, PointSource]:
        if self.basis is None:
            w = torch.randn(n, self.dim, generator=generator)
        else:
            w = torch.randn(n, self.basis.shape[1], generator=generator) @ self.basis.T
        xs, ys = self._balanced(w, self.support, generator)
        if self.balanced:
            xq, yq = self._balanced(w, self.query, generator)
        else:
            xq = torch.randn(n, self.query, self.dim, generator=generator)
            yq = (torch.einsum("nkd,nd->nk", xq, w) > 0).float()
        return Task(xs, ys, xq, yq), PointSource(self._points, (w,))

    def sample(self, n: int, generator: torch.Generator) -> Task:
        return self.sample_with_source(n, generator)[0]

    @staticmethod
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs.squeeze(-1), targets)

    @staticmethod
    def metric(outputs: Tensor, targets: Tensor) -> Tensor:
        return ((outputs.squeeze(-1) > 0).to(targets.dtype) == targets).to(outputs.dtype).mean()

