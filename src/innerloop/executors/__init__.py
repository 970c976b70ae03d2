"""Executors: how the tasks of a meta-batch are run (``Loop``, ``Threads``, ``Vmap``, and
``Distributed(inner)`` around any of them across torchrun's processes).

Add one by subclassing :class:`Executor` and registering it:
``registry.register("executor", "mine")(Mine)``; then ``train.execution = "mine"`` and
``algo.meta_backward(batch, "mine")`` find it.
"""

from innerloop.executors.base import Executor, TaskEnv, TaskFn, resolve
from innerloop.executors.distributed import Distributed
from innerloop.executors.loop import Loop
from innerloop.executors.threads import Threads
from innerloop.executors.vmap import Vmap

__all__ = ["Distributed", "Executor", "Loop", "TaskEnv", "TaskFn", "Threads", "Vmap", "resolve"]
