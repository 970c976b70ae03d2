"""The geometry step: how an update produced by a rule turns into new parameters.

Euclidean geometry adds the update to the parameters. A mirror-descent geometry (MetaMiDA) keeps
a dual variable ``z``, adds the update there, and maps back with a learned inverse mirror map; it
implements the same three methods, so the inner loop and the algorithms need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from innerloop import registry
from innerloop.rules.base import BuildContext
from innerloop.types import Params


class Geometry(nn.Module):
    def init(self, params: Params) -> Any:
        """The geometry's state at the start of adaptation, from the initial parameters."""
        raise NotImplementedError

    def params(self, state: Any) -> Params:
        """The model parameters the state stands for (where gradients are taken)."""
        raise NotImplementedError

    def step(self, state: Any, updates: Params) -> Any:
        """Apply one update."""
        raise NotImplementedError


class Euclidean(Geometry):
    """``θ ← θ + u``; the state is the parameter dict itself."""

    def init(self, params: Params) -> Params:
        return dict(params)

    def params(self, state: Params) -> Params:
        return state

    def step(self, state: Params, updates: Params) -> Params:
        return {k: v + updates[k] for k, v in state.items()}


class GeometryConfig(BaseModel):
    """Base of every geometry's config (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class GeometrySpec:
    name: str
    config: type[GeometryConfig]
    build: Any  # (cfg, BuildContext) -> Geometry


#: every registered geometry: the "geometry" table of :mod:`innerloop.registry`
GEOMETRIES: dict[str, GeometrySpec] = registry.table("geometry")


def register_geometry(name: str, config: type[GeometryConfig]):
    """Decorator: register ``build(cfg, ctx) -> Geometry`` under ``name``."""

    def deco(build):
        registry.register("geometry", name)(GeometrySpec(name, config, build))
        return build

    return deco


def build_geometry(cfg: GeometryConfig, ctx: BuildContext) -> Geometry:
    return GEOMETRIES[cfg.name].build(cfg, ctx)  # type: ignore[attr-defined]


class EuclideanConfig(GeometryConfig):
    name: Literal["euclidean"] = "euclidean"


@register_geometry("euclidean", EuclideanConfig)
def _build_euclidean(cfg: EuclideanConfig, ctx: BuildContext) -> Euclidean:
    return Euclidean()
