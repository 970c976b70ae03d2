"""Errors meant for the person running the tool: the CLI prints their message in one line and exits
with status 2 (no traceback)."""


class UserError(ValueError):
    """Bad input: a config, a path, a dataset on disk, an N-way/K-shot the data cannot serve."""
