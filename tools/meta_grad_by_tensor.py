"""Issue 14 (MetaMiDA "why not"): which meta-parameters carry a run's meta-gradient, step by step.

Replays a config (or a run directory's config.json) through ``innerloop.experiments.train.train``
itself — the same batches, initialisation, outer optimizer and clipping, so its losses equal the
run's — for ``--until`` meta-steps, and records, before every outer-optimizer step, the norm of each
meta-parameter tensor's gradient as the optimizer receives it (after ``train.clip_grad_norm`` when it
is set). No validation and no final test run. Writes a
CSV (``iteration``, ``total``, one column per tensor) and prints the ``--top`` largest steps with
the tensors that make most of their squared norm.

    .venv/bin/python tools/meta_grad_by_tensor.py CONFIG_OR_RUN_DIR [key=value ...] --until 1670 \
        --out grads.csv [--top 5]

The replay's own run directory (metrics.jsonl: losses and ``grad_norm_max`` per step) is written
next to the CSV, as ``<out>.run``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path

import torch

import innerloop.experiments.train as training
from innerloop.experiments.config import apply_overrides, load, validate
from innerloop.experiments.run import read_run_config


def recording_optimizer(rows: list[list[float]], names: list[str]):
    """A make_optimizer whose optimizer appends one row of per-tensor gradient norms per step."""
    original = training.make_optimizer

    def make(algo, tc):
        opt = original(algo, tc)
        named = [(n, p) for n, p in algo.named_parameters() if any(p is q for q in algo.meta_parameters())]
        names[:] = [n for n, _ in named]
        step = opt.step

        def recorded_step(*args, **kwargs):
            rows.append([float(p.grad.detach().double().norm()) if p.grad is not None else 0.0 for _, p in named])
            return step(*args, **kwargs)

        opt.step = recorded_step
        return opt

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="a config file, or a run directory (its config.json)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--until", type=int, required=True, help="meta-steps to replay")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument("--top", type=int, default=5, help="largest steps to print")
    a = p.parse_args()
    # one more iteration than replayed, stopped at --until: neither validation nor the final test runs
    n = a.until
    extra = [f"train.iterations={n + 1}", f"train.val_every={n + 1}", f"train.checkpoint_every={n + 1}",
             "train.log_every=1"]
    if a.config.is_dir():
        cfg = validate(apply_overrides(read_run_config(a.config), [*a.overrides, *extra]))
    else:
        cfg = load(a.config, [*a.overrides, *extra])
    rows: list[list[float]] = []
    names: list[str] = []
    training.make_optimizer = recording_optimizer(rows, names)
    try:
        training.train(cfg, a.out.with_name(a.out.name + ".run"), overwrite=True, progress=False, stop_at=n)
    except training.RunInterrupted:
        pass
    tmp = a.out.with_name(a.out.name + f".tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "total", *names])
        for it, r in enumerate(rows, 1):
            w.writerow([it, repr(math.sqrt(sum(v * v for v in r))), *map(repr, r)])
    tmp.replace(a.out)
    totals = [math.sqrt(sum(v * v for v in r)) for r in rows]
    median = sorted(totals)[len(totals) // 2]
    print(f"{len(rows)} meta-steps, {len(names)} tensors; median meta-gradient norm {median:.4g}")
    for i in sorted(range(len(rows)), key=lambda i: -totals[i])[: a.top]:
        sq = totals[i] ** 2 or 1.0
        parts = sorted(zip(names, rows[i], strict=True), key=lambda t: -t[1])[:5]
        print(f"meta-step {i + 1}: norm {totals[i]:.4g}; " +
              ", ".join(f"{n} {v:.3g} ({v * v / sq:.0%})" for n, v in parts))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
