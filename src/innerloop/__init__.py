"""innerloop: gradient-based meta-learning with learned inner-loop update rules.

The three independent axes are the update rule (:mod:`innerloop.rules`), the meta-algorithm
(:mod:`innerloop.algorithms`) and the task family (:mod:`innerloop.data`).
"""

from innerloop.algorithms import ALGORITHMS, ANIL, FOMAML, MAML, MetaAlgorithm, RandomInit, inner_loop
from innerloop.geometry import GEOMETRIES, Euclidean, Geometry
from innerloop.geometry.mirror import MirrorMap
from innerloop.rules import (
    ALFA,
    L2F,
    LSLR,
    MLPLR,
    RULES,
    SGD,
    Chain,
    KroneckerOptimizer,
    MetaCurvature,
    MetaSGD,
    UpdateRule,
    chain,
)
from innerloop.types import InnerResult, Params, Task

__version__ = "0.1.0"

__all__ = [
    "ALFA",
    "ALGORITHMS",
    "ANIL",
    "GEOMETRIES",
    "KroneckerOptimizer",
    "L2F",
    "MLPLR",
    "MetaCurvature",
    "MirrorMap",
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
