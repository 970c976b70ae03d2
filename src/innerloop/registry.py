"""One registry for every named thing a config or the CLI can name: ``register(kind, name)(factory)``.

Kinds used by the library: ``"executor"`` (and, as they move here, rules, geometries, algorithms,
models and datasets). A name is registered once per kind; registering it again is an error, so two
plugins cannot silently shadow each other. Lookups happen when a name is used, not at import, so a
name registered after ``innerloop`` is imported (a user's module, a plugin) is as valid as a
built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, dict[str, Any]] = {}
_version = 0  # bumped by every registration (the config rebuilds its unions when it changed)


class UnknownName(ValueError):
    """A name that is not registered for its kind (the message lists the registered ones)."""


def register(kind: str, name: str) -> Callable[[F], F]:
    """Decorator: register ``factory`` (a class, a function or a spec object) as ``name`` of
    ``kind``; returns it unchanged. Registering a name twice is an error."""

    def deco(factory: F) -> F:
        global _version
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not factory:
            raise ValueError(f"{kind} {name!r} registered twice (first by {_origin(table[name])})")
        table[name] = factory
        _version += 1
        return factory

    return deco


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` of ``kind``."""
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise UnknownName(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def table(kind: str) -> dict[str, Any]:
    """The live name → factory table of ``kind`` (read it; register through :func:`register`)."""
    return _REGISTRY.setdefault(kind, {})


def version() -> int:
    """A number that changes whenever anything is registered."""
    return _version


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return sorted(_REGISTRY.get(kind, {}))


def _origin(factory: Any) -> str:
    target = getattr(factory, "build", None) or getattr(factory, "load", None) or factory
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
