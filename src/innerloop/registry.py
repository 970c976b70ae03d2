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

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


class UnknownName(ValueError):
    """A name that is not registered for its kind (the message lists the registered ones)."""


def register(kind: str, name: str) -> Callable[[F], F]:
    """Decorator: register ``factory`` as ``name`` of ``kind``; returns the factory unchanged."""

    def deco(factory: F) -> F:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not factory:
            raise ValueError(f"{kind} {name!r} is already registered (by {_origin(table[name])})")
        table[name] = factory
        return factory

    return deco


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` of ``kind``."""
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise UnknownName(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return sorted(_REGISTRY.get(kind, {}))


def _origin(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"
