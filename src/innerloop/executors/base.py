"""The executor interface: how the tasks of a meta-batch are run.

A meta-algorithm says what one task's work is, as a function ``fn(state, task, env)``: ``state`` is
whatever the algorithm passes (its parameters and buffers; the executor never looks inside),
``task`` one :class:`~innerloop.types.Task`, and ``env`` the :class:`TaskEnv` the executor gives it
(how to take the inner loop's gradients, and which module instance to call). An executor runs that
function over every task and either stacks the outputs (:meth:`Executor.map`,
:meth:`Executor.evaluate`) or accumulates the meta-gradient of the mean query loss into ``.grad``
(:meth:`Executor.meta_backward`). Every executor computes the same numbers (float64 tests compare
them); they differ in speed and memory.

Executors are registered by name (``register("executor", name)``); the string a user gives
(``train.execution = "vmap"``, ``algo.meta_backward(batch, path="vmap")``) is resolved through
:func:`resolve` and nowhere else.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from innerloop import registry
from innerloop.executors.grads import ValueAndGrad
from innerloop.types import Task


def _same_module(module: nn.Module) -> nn.Module:
    return module


class TaskEnv(NamedTuple):
    """What a task's function gets from the executor running it.

    ``value_and_grad``: how the inner loop differentiates the support loss here (plain autograd, or
    ``torch.func`` under vmap). ``module(m)``: the instance of ``m`` this task may call with
    ``functional_call`` (the threads executor hands each worker a private copy, because
    ``functional_call`` swaps a module's tensors while it runs).
    """

    value_and_grad: ValueAndGrad
    module: Callable[[nn.Module], nn.Module] = _same_module


TaskFn = Callable[[Any, Task, TaskEnv], Any]


def stack_rows(rows: list[Any]) -> Any:
    """Stack a list of equally structured pytrees of tensors along a new leading dimension."""
    flat, spec = zip(*(tree_flatten(r) for r in rows), strict=True)
    return tree_unflatten([torch.stack(col) for col in zip(*flat, strict=True)], spec[0])


class Executor(ABC):
    """One way to run the tasks of a meta-batch. Subclasses implement :meth:`map` and
    :meth:`meta_backward`; :meth:`check` refuses what an executor cannot compute correctly."""

    #: registry name (for messages and logs)
    name: ClassVar[str] = "?"
    #: whether ``torch.utils.checkpoint`` composes with this executor's gradients
    supports_checkpoint: ClassVar[bool] = True
    #: whether second-order gradients through torch's native norm kernels are exact here
    exact_native_norms: ClassVar[bool] = True

    @abstractmethod
    def map(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        """``fn(state, task, env)`` for every task of ``batch``; outputs stacked (leading dim = tasks)."""

    @abstractmethod
    def meta_backward(self, fn: TaskFn, state: Any, batch: Task, metas: list[Tensor]) -> dict[str, float]:
        """``fn`` returns a task's ``(query loss, metric)`` scalars. Accumulate the gradient of the mean
        query loss over the batch into ``.grad`` of ``metas``; return the mean loss and metric."""

    def evaluate(self, fn: TaskFn, state: Any, batch: Task) -> Any:
        """:meth:`map` without building a graph for an outer backward."""
        with torch.no_grad():
            return self.map(fn, state, batch)

    def check(self, *, checkpoint: bool = False, native_norms: list[str] = ()) -> None:
        """Raise ``ValueError`` for work this executor cannot do right.

        ``native_norms``: names of torch norm modules (with an affine part) that the inner loop
        differentiates twice, i.e. second order."""
        if checkpoint and not self.supports_checkpoint:
            raise ValueError(f"activation checkpointing runs on the loop and threads paths, not {self.name!r}")
        if native_norms and not self.exact_native_norms:
            raise ValueError(
                f"the {self.name!r} executor gives wrong second-order meta-gradients through torch's native norm "
                f"kernels (their affine weight and bias under torch.func transforms, pytorch/functorch#534); the model "
                f"has {', '.join(native_norms)}. Fix: wrap the model with innerloop.models.exact_norms(model) (same "
                "parameters and buffers, the affine part applied outside the kernel), or use the 'loop' or 'threads' "
                "executor, or first order")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def resolve(spec: str | Executor, **defaults: Any) -> Executor:
    """An executor object from a registered name, or the object itself. A name's factory gets the
    ``defaults`` its signature names (e.g. ``chunk`` for ``"vmap"``); the others are not its
    business (an algorithm's ``vmap_chunk`` means nothing to the loop)."""
    if isinstance(spec, Executor):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"an executor is a name or an Executor, got {type(spec).__name__}")
    try:
        factory = registry.lookup("executor", spec)
    except registry.UnknownName:
        raise ValueError(f"unknown execution path {spec!r}; expected one of {', '.join(registry.names('executor'))} "
                         "or an Executor") from None
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in defaults.items() if k in accepted})
