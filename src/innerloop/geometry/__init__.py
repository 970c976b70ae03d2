"""Geometry steps (Euclidean; mirror descent). Importing this package registers every geometry."""

from innerloop.geometry import mirror  # noqa: F401  (registration side effect)
from innerloop.geometry.base import (
    GEOMETRIES,
    Euclidean,
    Geometry,
    GeometryConfig,
    build_geometry,
    register_geometry,
)

__all__ = ["GEOMETRIES", "Euclidean", "Geometry", "GeometryConfig", "build_geometry", "register_geometry"]
