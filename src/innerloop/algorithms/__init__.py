"""Meta-algorithms (outer loops) and the shared inner loop."""

from innerloop import registry
from innerloop.algorithms.anil import ANIL
from innerloop.algorithms.base import EvalOutput, MetaAlgorithm, without_norm
from innerloop.algorithms.inner_loop import inner_loop
from innerloop.algorithms.maml import FOMAML, MAML
from innerloop.algorithms.random_init import RandomInit
from innerloop.executors.grads import autograd_value_and_grad, func_value_and_grad

#: every registered meta-algorithm: the "algorithm" table of :mod:`innerloop.registry`
ALGORITHMS: dict[str, type[MetaAlgorithm]] = registry.table("algorithm")

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "FOMAML",
    "MAML",
    "EvalOutput",
    "MetaAlgorithm",
    "RandomInit",
    "autograd_value_and_grad",
    "func_value_and_grad",
    "inner_loop",
    "without_norm",
]
