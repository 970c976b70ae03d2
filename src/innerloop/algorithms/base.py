"""Meta-algorithms: how the meta-gradient is formed. They own the trajectory, not a step's maths.

A meta-algorithm holds the model (its parameters are θ0), the update rule and the geometry, and
runs a meta-batch through one of three execution paths that compute the same numbers:

* ``"loop"``: a Python loop over tasks, each task's query loss back-propagated as soon as it is
  computed (so only one task's graph is alive at a time);
* ``"vmap"``: ``torch.func.vmap`` over the task dimension, one backward for the batch;
* ``"threads"``: the loop's per-task work spread over a pool of threads (as many as torch's
  intra-op threads), each running its tasks with single-threaded kernels; the per-task
  meta-gradients are summed in task order. Few-shot tasks are too small for intra-op parallelism
  to pay, while independent tasks keep every core busy.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from innerloop.algorithms.inner_loop import (
    Forward,
    autograd_value_and_grad,
    func_value_and_grad,
    inner_loop,
)
from innerloop.geometry import Euclidean, Geometry
from innerloop.rules.base import UpdateRule
from innerloop.types import InnerResult, Params, Task

Path = Literal["loop", "vmap", "threads"]
PATHS = ("loop", "vmap", "threads")
MetricFn = Callable[[Tensor, Tensor], Tensor]

_tls = threading.local()


def _thread_model(model: nn.Module) -> nn.Module:
    """``model`` itself, or in a worker thread of the ``threads`` path a private copy of it:
    ``functional_call`` swaps a module's tensors while it runs, so two threads must not share one
    module. The copy's own tensors are never read (every parameter and buffer is passed in). The
    cache lives as long as the worker thread, i.e. one meta-batch."""
    if not getattr(_tls, "worker", False):
        return model
    cache = _tls.__dict__.setdefault("models", {})
    hit = cache.get(id(model))
    if hit is None or hit[0] is not model:
        # the copy's tensors are placeholders (functional_call replaces every one of them), so the
        # copy costs the module structure only, not the weights
        memo = {id(t): nn.Parameter(t.new_empty(0), requires_grad=t.requires_grad) for t in model.parameters()}
        memo.update({id(b): b.new_empty(0) for b in model.buffers()})
        hit = cache[id(model)] = (model, copy.deepcopy(model, memo))
    return hit[1]


def _worker_init() -> None:
    _tls.worker = True
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
        adapted: names of the tensors adapted in the inner loop (default: :meth:`adapted_names`;
            e.g. :func:`without_norm` of it for ALFA / MAML++, which keep norm scales and shifts
            out of the inner loop). The rule must be built for exactly these tensors.
        second_order_steps: in meta-training, keep second-order terms only through the last
            ``k`` inner steps (``None``: all of them). A memory control; see :func:`inner_loop`.
        checkpoint: activation checkpointing across inner steps in meta-training (loop path).
        vmap_chunk: on the vmap path, meta-train on this many tasks at a time (each chunk's
            graph is back-propagated before the next is built); ``None``: the whole meta-batch.
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
        adapted: list[str] | None = None,
        second_order_steps: int | None = None,
        checkpoint: bool = False,
        vmap_chunk: int | None = None,
    ):
        super().__init__()
        self.adapted = list(adapted) if adapted is not None else self.adapted_names(model)
        unknown = set(self.adapted) - dict(model.named_parameters()).keys()
        if unknown:
            raise ValueError(f"adapted names not in the model: {sorted(unknown)}")
        self.model = model
        self.rule = rule
        self.geometry = geometry if geometry is not None else Euclidean()
        self.loss_fn = loss_fn
        self.metric_fn = metric_fn
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None else inner_steps)
        self.first_order = bool(first_order)
        if second_order_steps is not None and second_order_steps < 0:
            raise ValueError(f"second_order_steps must be >= 0 or None, got {second_order_steps}")
        self.second_order_steps = second_order_steps
        self.checkpoint = bool(checkpoint)
        if self.checkpoint and not rule.supports_checkpoint:
            raise ValueError(f"rule {type(rule).__name__} does not support activation checkpointing "
                             "(it runs a torch.func transform inside its update)")
        if vmap_chunk is not None and vmap_chunk < 1:
            raise ValueError(f"vmap_chunk must be >= 1 or None, got {vmap_chunk}")
        self.vmap_chunk = vmap_chunk
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
        adapted = {n: params[n] for n in self.adapted}
        fixed = {n: v for n, v in params.items() if n not in adapted}

        model = _thread_model(self.model)

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(model, {**fixed, **p}, (x,))

        return forward, adapted, task.support_x, task.query_x

    # ---- one task ----------------------------------------------------------------------------
    def run_task(
        self, params: Params, task: Task, *, steps: int, first_order: bool, value_and_grad,
        training: bool = False,
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
            second_order_steps=self.second_order_steps if training else None,
            checkpoint=self.checkpoint and training and value_and_grad is autograd_value_and_grad,
        )
        return forward(res.params, qx), res

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    # ---- a meta-batch ------------------------------------------------------------------------
    def map_tasks(self, batch: Task, path: Path, fn, params: Params | None = None):
        """Apply ``fn(params, task, value_and_grad)`` to every task; stack the outputs (a pytree)."""
        params = self.params() if params is None else params
        if path == "loop":
            rows = [fn(params, batch.index(i), autograd_value_and_grad) for i in range(batch.num_tasks)]
            flat, spec = zip(*(tree_flatten(r) for r in rows), strict=True)
            return tree_unflatten([torch.stack(col) for col in zip(*flat, strict=True)], spec[0])
        if path == "threads":
            grad_mode = torch.is_grad_enabled()

            def one(i):
                with torch.set_grad_enabled(grad_mode):
                    return fn(params, batch.index(i), autograd_value_and_grad)

            with _task_pool() as pool:
                rows = list(pool.map(one, range(batch.num_tasks)))
            flat, spec = zip(*(tree_flatten(r) for r in rows), strict=True)
            return tree_unflatten([torch.stack(col) for col in zip(*flat, strict=True)], spec[0])
        if path == "vmap":
            per_task = lambda p, sx, sy, qx, qy: fn(p, Task(sx, sy, qx, qy), func_value_and_grad)
            return torch.func.vmap(per_task, in_dims=(None, 0, 0, 0, 0))(params, *batch)
        raise ValueError(f"unknown execution path {path!r}; expected one of {', '.join(PATHS)}")

    def _check_path(self, path: Path) -> None:
        if self.checkpoint and path == "vmap":
            raise ValueError(f"activation checkpointing runs on the loop and threads paths, not {path!r}")

    def _query(self, p: Params, task: Task, vg) -> tuple[Tensor, Tensor]:
        out, _ = self.run_task(p, task, steps=self.inner_steps, first_order=self.first_order, value_and_grad=vg,
                               training=True)
        return self.loss_fn(out, task.query_y), self.metric_fn(out.detach(), task.query_y)

    def forward(self, batch: Task, path: Path = "loop") -> Tensor:
        """Per-task query losses ``[B]`` after meta-training-mode adaptation, differentiable with
        respect to every meta-parameter (so ``torch.func.functional_call(algo, ...)`` and
        ``gradcheck`` apply). Training uses :meth:`meta_backward`, which frees graphs early."""
        return self.map_tasks(batch, path, lambda p, t, vg: self._query(p, t, vg)[0])

    def meta_backward(self, batch: Task, path: Path = "loop") -> dict[str, float]:
        """Accumulate the meta-gradient of the mean query loss into ``.grad``; return mean metrics.

        Does not zero gradients and does not step the optimizer. The loop path back-propagates
        each task as soon as its query loss exists, so one task's graph is alive at a time.
        """
        self._check_path(path)
        n = batch.num_tasks
        if path == "loop":
            params = self.params()
            tot_loss = tot_metric = 0.0
            for i in range(n):
                loss, metric = self._query(params, batch.index(i), autograd_value_and_grad)
                if loss.requires_grad:
                    (loss / n).backward()
                tot_loss += loss.item()
                tot_metric += metric.item()
            return {"loss": tot_loss / n, "metric": tot_metric / n}
        if path == "threads":
            return self._meta_backward_threads(batch)
        # vmap: all tasks of a chunk in one batched graph, back-propagated before the next chunk
        chunk = self.vmap_chunk or n
        tot_loss = tot_metric = 0.0
        for i in range(0, n, chunk):
            part = Task(*(t[i : i + chunk] for t in batch))
            losses, metrics = self.map_tasks(part, path, self._query)
            loss = losses.sum() / n
            if loss.requires_grad:
                loss.backward()
            tot_loss += losses.sum().item()
            tot_metric += metrics.sum().item()
        return {"loss": tot_loss / n, "metric": tot_metric / n}

    def _meta_backward_threads(self, batch: Task) -> dict[str, float]:
        n = batch.num_tasks
        params, metas = self.params(), self.meta_parameters()

        def one(i):
            loss, metric = self._query(params, batch.index(i), autograd_value_and_grad)
            grads = (torch.autograd.grad(loss / n, metas, allow_unused=True) if loss.requires_grad and metas
                     else (None,) * len(metas))
            return loss.item(), metric.item(), grads

        with _task_pool() as pool:
            rows = list(pool.map(one, range(n)))
        # accumulate in task order, as the loop path's successive backward() calls do
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

    @torch.no_grad()
    def evaluate(self, batch: Task, path: Path = "loop", steps: int | None = None) -> EvalOutput:
        """Adapt to each task of ``batch`` (``eval_inner_steps`` by default) and score its query set."""
        steps = self.eval_inner_steps if steps is None else int(steps)

        def per_task(p, task, vg):
            out, res = self.run_task(p, task, steps=steps, first_order=True, value_and_grad=vg)
            return (self.loss_fn(out, task.query_y), self.metric_fn(out, task.query_y),
                    res.support_losses, res.trace)

        params = {k: v.detach() for k, v in self.params().items()}
        return EvalOutput(*self.map_tasks(batch, path, per_task, params))


def without_norm(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` minus the scale and shift of normalisation layers (BatchNorm / GroupNorm)."""
    from innerloop.models.conv import BatchNorm2d, GroupNorm

    norm = {f"{m}.{p}" if m else p for m, mod in model.named_modules()
            if isinstance(mod, (BatchNorm2d, GroupNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            for p, _ in mod.named_parameters(recurse=False)}
    return [n for n in names if n not in norm]
