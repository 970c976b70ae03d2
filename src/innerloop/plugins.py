"""A user's own rules, models, datasets, task families and executors, named in a config or on the command line.

A plugin is a Python module that registers things when imported (``@register_rule``, ``@register_model``,
``@register_task``, ``@register_dataset``, ``registry.register("executor", ...)``). Three ways to load one:

* ``innerloop --import my_pkg.rules train cfg.toml`` (repeatable);
* ``plugins = ["my_pkg.rules"]`` at the top of a config file (imported when the config is validated,
  so a run directory's ``config.json`` brings its plugins back on ``--resume`` and ``eval``);
* an installed package's entry point in the group ``innerloop.plugins`` (loaded by every CLI command).

Importing a plugin runs its code: name only modules you trust, as with any Python import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from innerloop.errors import UserError

GROUP = "innerloop.plugins"


class PluginError(UserError):
    """A plugin module that cannot be imported."""


def load(modules: list[str]) -> None:
    """Import each module (a plugin registers on import); already imported ones are not run again."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise PluginError(f"plugin {name!r} cannot be imported: {e}") from None


def load_entry_points() -> list[str]:
    """Import every module of an installed ``innerloop.plugins`` entry point; their names."""
    names = []
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except ImportError as e:
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) cannot be imported: {e}") from None
        names.append(ep.name)
    return names
