"""Configs, building, training, evaluation and the command line."""
