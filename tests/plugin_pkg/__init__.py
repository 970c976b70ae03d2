"""A user's package with its own rule and model, for the plugin tests (imported only in subprocesses)."""
