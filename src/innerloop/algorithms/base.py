"""Meta-algorithms: how the meta-gradient is formed. They own the trajectory, not a step's maths.

A meta-algorithm holds the model (its parameters are θ0), the update rule and the geometry, and
says what *one task's* work is: which tensors adapt (:meth:`MetaAlgorithm.adapted_names`), what the
inner loop runs on (:meth:`MetaAlgorithm.prepare`) and whether θ0 is meta-learned. How the tasks of
a meta-batch are run (a loop, threads, vmap) is an executor's job (:mod:`innerloop.executors`);
``path=`` takes an executor object or a registered name.

Model state (see docs/architecture.md, "Model state"): parameters and buffers are passed
explicitly, ``functional_call(model, (params, buffers), x)``. Running statistics of norm layers are
never updated by innerloop: meta-training and adaptation normalise with the batch's statistics
(the running-stat buffers are passed as ``None``); :meth:`MetaAlgorithm.evaluate` runs the model in
eval mode (Dropout off) and normalises with the batch's statistics too (``norm_stats="batch"``,
transductive, the papers' protocol and the default) or with the stored running statistics
(``norm_stats="running"``, e.g. a pretrained backbone's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from innerloop.algorithms.inner_loop import Forward, inner_loop
from innerloop.executors import Executor, TaskEnv, resolve
from innerloop.executors.grads import autograd_value_and_grad
from innerloop.geometry import Euclidean, Geometry
from innerloop.models.norms import is_norm, native_norms, running_stat_buffers
from innerloop.rules.base import UpdateRule, check_built_for
from innerloop.types import InnerResult, Params, Task

MetricFn = Callable[[Tensor, Tensor], Tensor]
NormStats = Literal["batch", "running"]
#: model state as the executors pass it: (parameters, buffers); a buffer may be None (see module doc)
State = tuple[Params, dict[str, Tensor | None]]


class EvalOutput(NamedTuple):
    """Per-task results of :meth:`MetaAlgorithm.evaluate` (leading dimension = tasks)."""

    loss: Tensor  # [B] query loss
    metric: Tensor  # [B] query metric (accuracy or MSE)
    support_losses: Tensor  # [B, S] support loss before each inner step
    trace: dict[str, Tensor]  # name -> [B, S] scalars reported by the rule


class MetaAlgorithm(nn.Module):
    """MAML-style meta-learning; subclasses change which tensors adapt and which are meta-learned.

    Args:
        model: the network; its parameters are the initialisation θ0. Parameters with
            ``requires_grad=False`` are frozen: neither adapted (unless named in ``adapted``) nor
            meta-learned.
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
        checkpoint: activation checkpointing across inner steps in meta-training (loop and
            threads executors).
        vmap_chunk: the chunk of the executor named ``"vmap"``: meta-train on this many tasks at a
            time; ``None``: the whole meta-batch.
        norm_stats: what norm layers with running statistics use in :meth:`evaluate`: ``"batch"``
            (the task's batch statistics, transductive; default) or ``"running"`` (the stored
            buffers). Meta-training always uses batch statistics and never updates the buffers.
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
        norm_stats: NormStats = "batch",
    ):
        super().__init__()
        _refuse_shared_modules(model)
        self.adapted = list(adapted) if adapted is not None else self.adapted_names(model)
        unknown = set(self.adapted) - dict(model.named_parameters()).keys()
        if unknown:
            raise ValueError(f"adapted names not in the model: {sorted(unknown)}")
        self.model = model
        self.rule = rule
        self.geometry = geometry if geometry is not None else Euclidean()
        params = dict(model.named_parameters())
        adapted_shapes = {n: params[n].shape for n in self.adapted}
        check_built_for(rule, adapted_shapes, type(self).__name__)
        check_built_for(self.geometry, adapted_shapes, type(self).__name__)
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
        if norm_stats not in ("batch", "running"):
            raise ValueError(f"norm_stats must be 'batch' or 'running', got {norm_stats!r}")
        self.norm_stats = norm_stats
        if not self.learns_init:
            for p in self.model.parameters():
                p.requires_grad_(False)

    # ---- what adapts, what is meta-learned --------------------------------------------------
    @classmethod
    def adapted_names(cls, model: nn.Module) -> list[str]:
        """Names of the parameters adapted in the inner loop (default: every trainable one)."""
        return [n for n, p in model.named_parameters() if p.requires_grad]

    @classmethod
    def adapted_shapes(cls, model: nn.Module) -> dict[str, torch.Size]:
        """``{name: shape}`` of the tensors this algorithm adapts in ``model``: what to build a rule for."""
        params = dict(model.named_parameters())
        return {n: params[n].shape for n in cls.adapted_names(model)}

    def meta_parameters(self) -> list[nn.Parameter]:
        """The parameters the outer optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def inner_modules(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of what the inner loop differentiates (twice, in second order)."""
        return [("", self.model)]

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def buffers_for(self, training: bool) -> dict[str, Tensor | None]:
        """The model's buffers as passed to ``functional_call``: running statistics of norm layers
        are ``None`` (batch statistics, nothing mutated) except in evaluation with
        ``norm_stats="running"``."""
        drop = training or self.norm_stats == "batch"
        running = running_stat_buffers(self.model) if drop else set()
        return {n: (None if n in running else b) for n, b in self.model.named_buffers()}

    def prepare(self, params: Params, task: Task, buffers: dict | None = None,
                module: Callable[[nn.Module], nn.Module] | None = None) -> tuple[Forward, Params, Tensor, Tensor]:
        """Return ``(forward, adapted, support_inputs, query_inputs)`` for one task.

        ``module(m)`` gives the instance of ``m`` to call (an executor's :class:`TaskEnv`)."""
        buffers = self.buffers_for(True) if buffers is None else buffers
        adapted = {n: params[n] for n in self.adapted}
        fixed = {n: v for n, v in params.items() if n not in adapted}
        model = module(self.model) if module is not None else self.model

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(model, ({**fixed, **p}, buffers), (x,))

        return forward, adapted, task.support_x, task.query_x

    # ---- one task ----------------------------------------------------------------------------
    def run_task(
        self, params: Params, task: Task, *, steps: int, first_order: bool, value_and_grad,
        training: bool = False, buffers: dict | None = None, module: Callable[[nn.Module], nn.Module] | None = None,
    ) -> tuple[Tensor, InnerResult]:
        """Adapt on the support set and return the query outputs and the inner result."""
        forward, adapted, sx, qx = self.prepare(params, task, buffers, module)
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

    def _query(self, state: State, task: Task, env: TaskEnv) -> tuple[Tensor, Tensor]:
        params, buffers = state
        out, _ = self.run_task(params, task, steps=self.inner_steps, first_order=self.first_order,
                               value_and_grad=env.value_and_grad, training=True, buffers=buffers, module=env.module)
        return self.loss_fn(out, task.query_y), self.metric_fn(out.detach(), task.query_y)

    # ---- a meta-batch ------------------------------------------------------------------------
    def executor(self, path: str | Executor) -> Executor:
        """The executor for ``path`` (a registered name or an :class:`Executor`)."""
        return resolve(path, chunk=self.vmap_chunk)

    def _training_executor(self, path: str | Executor) -> Executor:
        ex = self.executor(path)
        second_order = not self.first_order and self.second_order_steps != 0
        ex.check(checkpoint=self.checkpoint,
                 native_norms=[n for name, m in self.inner_modules() for n in native_norms(m, name)]
                 if second_order else [])
        return ex

    def forward(self, batch: Task, path: str | Executor = "loop") -> Tensor:
        """Per-task query losses ``[B]`` after meta-training-mode adaptation, differentiable with
        respect to every meta-parameter (so ``torch.func.functional_call(algo, ...)`` and
        ``gradcheck`` apply). Training uses :meth:`meta_backward`, which frees graphs early."""
        ex = self._training_executor(path)
        return ex.map(lambda s, t, env: self._query(s, t, env)[0], (self.params(), self.buffers_for(True)), batch)

    def meta_backward(self, batch: Task, path: str | Executor = "loop") -> dict[str, float]:
        """Accumulate the meta-gradient of the mean query loss into ``.grad``; return mean metrics.

        Does not zero gradients and does not step the optimizer. ``path``: an executor or its
        registered name (``"loop"``, ``"threads"``, ``"vmap"``).
        """
        ex = self._training_executor(path)
        return ex.meta_backward(self._query, (self.params(), self.buffers_for(True)), batch, self.meta_parameters())

    @torch.no_grad()
    def evaluate(self, batch: Task, path: str | Executor = "loop", steps: int | None = None) -> EvalOutput:
        """Adapt to each task of ``batch`` (``eval_inner_steps`` by default) and score its query set,
        with the model in eval mode (norm statistics: ``norm_stats``)."""
        steps = self.eval_inner_steps if steps is None else int(steps)

        def per_task(state: State, task: Task, env: TaskEnv):
            p, b = state
            out, res = self.run_task(p, task, steps=steps, first_order=True, value_and_grad=env.value_and_grad,
                                     buffers=b, module=env.module)
            return (self.loss_fn(out, task.query_y), self.metric_fn(out, task.query_y),
                    res.support_losses, res.trace)

        params = {k: v.detach() for k, v in self.params().items()}
        with eval_mode(self.model):
            return EvalOutput(*self.executor(path).evaluate(per_task, (params, self.buffers_for(False)), batch))


def _refuse_shared_modules(model: nn.Module) -> None:
    """A module with its own tensors reachable under two names breaks ``functional_call`` in torch
    2.13 (restoring the second name writes the swapped-in tensor back: θ0 becomes a non-leaf and
    gets no gradient); tied *parameters* work. Refuse with the fix rather than compute garbage."""
    first: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        own = next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        if id(m) in first and own:
            raise ValueError(
                f"module {name!r} is the same object as {first[id(m)]!r} (a module registered twice); "
                "functional_call cannot swap its tensors correctly. Share the parameters instead "
                f"(e.g. model.{name}.weight = model.{first[id(m)]}.weight) or call one module twice in forward")
        first.setdefault(id(m), name)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the duration; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def without_norm(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` minus the scale and shift of normalisation layers (BatchNorm / GroupNorm / LayerNorm)."""
    norm = {f"{m}.{p}" if m else p for m, mod in model.named_modules() if is_norm(mod)
            for p, _ in mod.named_parameters(recurse=False)}
    return [n for n in names if n not in norm]
