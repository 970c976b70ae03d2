"""``innerloop eval RUN --dataset NAME [--root DIR] [--split-file F]``: a trained run's config with its
test set replaced by another image dataset (cross-domain evaluation), and where the result goes.

The run's own ``task.test_dataset`` / ``test_root`` / ``test_split_file`` are the config's way to
name a cross-domain test set; this sets them on a copy of the stored config (the run directory's
``config.json`` is never changed). Way, shot, query and the rest of the task stay the run's.
"""

from __future__ import annotations

import re

from innerloop.data.images import DATASETS
from innerloop.experiments.config import Config, ConfigError


def with_test_dataset(cfg: Config, dataset: str, root: str | None, split_file: str | None) -> Config:
    """``cfg`` with its validation and test episodes drawn from ``dataset`` under ``root``."""
    if cfg.task.name != "images":
        raise ConfigError(f"--dataset needs a run on image tasks; this run's task is {cfg.task.name!r}")
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {dataset!r} (known: {', '.join(sorted(DATASETS))})")
    task = cfg.task.model_copy(update={"test_dataset": dataset, "test_root": root, "test_split_file": split_file})
    return cfg.model_copy(update={"task": task})


def check_options(dataset: str | None, root: str | None, split_file: str | None) -> None:
    if dataset is None and (root is not None or split_file is not None):
        raise ConfigError("--root and --split-file name the data of --dataset; give --dataset too")


def file_tag(dataset: str) -> str:
    """``dataset`` as a part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)


def evaluate(run_eval, dataset: str | None):
    """``run_eval()``; on another dataset, a model that cannot take its images is one error, not a traceback."""
    if dataset is None:
        return run_eval()
    try:
        return run_eval()
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"--dataset {dataset}: the run's model cannot take this dataset's images ({first})") from None
