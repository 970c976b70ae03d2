"""Inner-loop update rules. Importing this package registers every rule in :data:`RULES`."""

from innerloop.rules import alfa, chained, kfo, l2f, lslr, meta_curvature, meta_sgd, mlplr, sgd  # noqa: F401  (registration side effects)
from innerloop.rules.alfa import ALFA
from innerloop.rules.base import (
    RULES,
    BuildContext,
    Chain,
    RuleConfig,
    UpdateRule,
    build_rule,
    chain,
    register_rule,
)
from innerloop.rules.kfo import KroneckerOptimizer
from innerloop.rules.l2f import L2F
from innerloop.rules.lslr import LSLR
from innerloop.rules.meta_curvature import MetaCurvature
from innerloop.rules.meta_sgd import MetaSGD
from innerloop.rules.mlplr import MLPLR
from innerloop.rules.sgd import SGD

__all__ = [
    "ALFA",
    "L2F",
    "MLPLR",
    "KroneckerOptimizer",
    "MetaCurvature",
    "RULES",
    "LSLR",
    "SGD",
    "BuildContext",
    "Chain",
    "MetaSGD",
    "RuleConfig",
    "UpdateRule",
    "build_rule",
    "chain",
    "register_rule",
]
