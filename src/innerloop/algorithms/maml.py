"""MAML (second order) and FOMAML (first order): every parameter adapts, θ0 is meta-learned."""

from __future__ import annotations

from innerloop import registry
from innerloop.algorithms.base import MetaAlgorithm


@registry.register("algorithm", "maml")
class MAML(MetaAlgorithm):
    """Finn et al., 2017. ``first_order=True`` gives FOMAML."""


@registry.register("algorithm", "fomaml")
class FOMAML(MetaAlgorithm):
    """MAML with the inner gradients detached. The rule's meta-parameters still get meta-gradients
    through the path ``θ_S = θ0 + Σ u_j(α, g_j)``."""

    def __init__(self, *args, **kwargs):
        kwargs["first_order"] = True
        super().__init__(*args, **kwargs)
