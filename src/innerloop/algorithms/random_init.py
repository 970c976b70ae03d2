"""Random init (ALFA's baseline): θ0 is a fixed random initialisation that is never meta-updated;
only the rule's (and geometry's) meta-parameters are learned."""

from __future__ import annotations

from innerloop import registry
from innerloop.algorithms.base import MetaAlgorithm


@registry.register("algorithm", "random_init")
class RandomInit(MetaAlgorithm):
    learns_init = False
