"""innerloop: gradient-based meta-learning with learned inner-loop update rules.

The three independent axes are the update rule (:mod:`innerloop.rules`), the meta-algorithm
(:mod:`innerloop.algorithms`) and the task family (:mod:`innerloop.data`).
"""

from innerloop.algorithms import ALGORITHMS, ANIL, FOMAML, MAML, MetaAlgorithm, RandomInit, inner_loop
from innerloop.geometry import Euclidean, Geometry
from innerloop.rules import LSLR, RULES, SGD, Chain, MetaSGD, UpdateRule, chain
from innerloop.types import InnerResult, Params, Task

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "FOMAML",
    "LSLR",
    "MAML",
    "RULES",
    "SGD",
    "Chain",
    "Euclidean",
    "Geometry",
    "InnerResult",
    "MetaAlgorithm",
    "MetaSGD",
    "Params",
    "RandomInit",
    "Task",
    "UpdateRule",
    "chain",
    "inner_loop",
]
