"""Meta-algorithms: how the meta-gradient is formed. They own the trajectory, not a step's maths.

A meta-algorithm holds the model (its parameters are θ0), the update rule and the geometry, and
runs a meta-batch through one of two execution paths that compute the same numbers:

* ``"loop"``: a Python loop over tasks, each task's query loss back-propagated as soon as it is
  computed (so only one task's graph is alive at a time);
* ``"vmap"``: ``torch.func.vmap`` over the task dimension, one backward for the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from innerloop.algorithms.inner_loop import (
    Forward,
    autograd_value_and_grad,
    func_value_and_grad,
    inner_loop,
)
from innerloop.geometry import Euclidean, Geometry
from innerloop.rules.base import UpdateRule
from innerloop.types import InnerResult, Params, Task

Path = Literal["loop", "vmap"]
MetricFn = Callable[[Tensor, Tensor], Tensor]


class EvalOutput(NamedTuple):
    """Per-task results of :meth:`MetaAlgorithm.evaluate` (leading dimension = tasks)."""

    loss: Tensor  # [B] query loss
    metric: Tensor  # [B] query metric (accuracy or MSE)
    support_losses: Tensor  # [B, S] support loss before each inner step
    trace: dict[str, Tensor]  # name -> [B, S] scalars reported by the rule


class MetaAlgorithm(nn.Module):
    """MAML-style meta-learning; subclasses change which tensors adapt and which are meta-learned.

    Args:
        model: the network; its parameters are the initialisation θ0.
        rule: the inner update rule (built for the tensors :meth:`adapted_names` returns).
        loss_fn: ``loss_fn(outputs, targets)`` → scalar mean loss (support and query).
        metric_fn: ``metric_fn(outputs, targets)`` → scalar reported metric.
        inner_steps / eval_inner_steps: inner steps in meta-training / evaluation.
        first_order: cut the support gradients from the graph (FOMAML).
        geometry: the geometry step (default Euclidean).
    """

    #: whether θ0 is meta-learned (False for the random-init baseline)
    learns_init: bool = True

    def __init__(
        self,
        model: nn.Module,
        rule: UpdateRule,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        metric_fn: MetricFn,
        inner_steps: int,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        geometry: Geometry | None = None,
    ):
        super().__init__()
        self.model = model
        self.rule = rule
        self.geometry = geometry if geometry is not None else Euclidean()
        self.loss_fn = loss_fn
        self.metric_fn = metric_fn
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None else inner_steps)
        self.first_order = bool(first_order)
        if not self.learns_init:
            for p in self.model.parameters():
                p.requires_grad_(False)

    # ---- what adapts, what is meta-learned --------------------------------------------------
    @classmethod
    def adapted_names(cls, model: nn.Module) -> list[str]:
        """Names of the parameters adapted in the inner loop (default: all of them)."""
        return [n for n, _ in model.named_parameters()]

    def meta_parameters(self) -> list[nn.Parameter]:
        """The parameters the outer optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def prepare(self, params: Params, task: Task) -> tuple[Forward, Params, Tensor, Tensor]:
        """Return ``(forward, adapted, support_inputs, query_inputs)`` for one task."""
        adapted = {n: params[n] for n in self.adapted_names(self.model)}
        fixed = {n: v for n, v in params.items() if n not in adapted}

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(self.model, {**fixed, **p}, (x,))

        return forward, adapted, task.support_x, task.query_x

    # ---- one task ----------------------------------------------------------------------------
    def run_task(
        self, params: Params, task: Task, *, steps: int, first_order: bool, value_and_grad
    ) -> tuple[Tensor, InnerResult]:
        """Adapt on the support set and return the query outputs and the inner result."""
        forward, adapted, sx, qx = self.prepare(params, task)
        res = inner_loop(
            forward,
            adapted,
            sx,
            task.support_y,
            rule=self.rule,
            geometry=self.geometry,
            loss_fn=self.loss_fn,
            steps=steps,
            first_order=first_order,
            value_and_grad=value_and_grad,
        )
        return forward(res.params, qx), res

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    # ---- a meta-batch ------------------------------------------------------------------------
    def forward(self, batch: Task, path: Path = "loop") -> Tensor:
        """Per-task query losses ``[B]`` after meta-training-mode adaptation, differentiable with
        respect to every meta-parameter (so ``torch.func.functional_call(algo, ...)`` and
        ``gradcheck`` apply). Training uses :meth:`meta_backward`, which frees graphs early."""
        steps, fo = self.inner_steps, self.first_order
        params = self.params()

        def per_task(p, sx, sy, qx, qy, vg):
            out, _ = self.run_task(p, Task(sx, sy, qx, qy), steps=steps, first_order=fo, value_and_grad=vg)
            return self.loss_fn(out, qy)

        if path == "loop":
            return torch.stack([per_task(params, *batch.index(i), autograd_value_and_grad)
                                for i in range(batch.num_tasks)])
        fn = lambda p, sx, sy, qx, qy: per_task(p, sx, sy, qx, qy, func_value_and_grad)
        return torch.func.vmap(fn, in_dims=(None, 0, 0, 0, 0))(params, *batch)

    def meta_backward(self, batch: Task, path: Path = "loop") -> dict[str, float]:
        """Accumulate the meta-gradient of the mean query loss into ``.grad``; return mean metrics.

        Does not zero gradients and does not step the optimizer.
        """
        steps, fo = self.inner_steps, self.first_order
        params = self.params()
        n = batch.num_tasks
        if path == "loop":
            tot_loss = tot_metric = 0.0
            for i in range(n):
                t = batch.index(i)
                out, _ = self.run_task(params, t, steps=steps, first_order=fo,
                                       value_and_grad=autograd_value_and_grad)
                loss = self.loss_fn(out, t.query_y)
                if loss.requires_grad:
                    (loss / n).backward()
                tot_loss += loss.item()
                tot_metric += self.metric_fn(out.detach(), t.query_y).item()
            return {"loss": tot_loss / n, "metric": tot_metric / n}
        if path == "vmap":
            def per_task(p, sx, sy, qx, qy):
                out, _ = self.run_task(p, Task(sx, sy, qx, qy), steps=steps, first_order=fo,
                                       value_and_grad=func_value_and_grad)
                return self.loss_fn(out, qy), self.metric_fn(out.detach(), qy)

            losses, metrics = torch.func.vmap(per_task, in_dims=(None, 0, 0, 0, 0))(params, *batch)
            loss = losses.mean()
            if loss.requires_grad:
                loss.backward()
            return {"loss": loss.item(), "metric": metrics.mean().item()}
        raise ValueError(f"unknown execution path {path!r}; expected 'loop' or 'vmap'")

    @torch.no_grad()
    def evaluate(self, batch: Task, path: Path = "loop", steps: int | None = None) -> EvalOutput:
        """Adapt to each task of ``batch`` (``eval_inner_steps`` by default) and score its query set."""
        steps = self.eval_inner_steps if steps is None else int(steps)
        params = {k: v.detach() for k, v in self.params().items()}

        def per_task(p, sx, sy, qx, qy, vg):
            out, res = self.run_task(p, Task(sx, sy, qx, qy), steps=steps, first_order=True,
                                     value_and_grad=vg)
            return self.loss_fn(out, qy), self.metric_fn(out, qy), res.support_losses, res.trace

        if path == "loop":
            rows = [per_task(params, *batch.index(i), autograd_value_and_grad) for i in range(batch.num_tasks)]
            loss, metric, sl, trace = (
                torch.stack([r[0] for r in rows]),
                torch.stack([r[1] for r in rows]),
                torch.stack([r[2] for r in rows]),
                {k: torch.stack([r[3][k] for r in rows]) for k in rows[0][3]},
            )
        elif path == "vmap":
            fn = lambda p, sx, sy, qx, qy: per_task(p, sx, sy, qx, qy, func_value_and_grad)
            loss, metric, sl, trace = torch.func.vmap(fn, in_dims=(None, 0, 0, 0, 0))(params, *batch)
        else:
            raise ValueError(f"unknown execution path {path!r}; expected 'loop' or 'vmap'")
        return EvalOutput(loss, metric, sl, trace)
