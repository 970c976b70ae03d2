"""Issue 14 (MetaMiDA "why not"): which meta-parameters carry a run's meta-gradient, step by step.

Replays a config (or a run directory's config.json) through ``innerloop.experiments.train.train``
itself — the same batches, initialisation, outer optimizer and clipping, so its losses equal the
run's — for ``--until`` meta-steps, and records, before every outer-optimizer step, the norm of each
meta-parameter tensor's gradient as the optimizer receives it (after ``train.clip_grad_norm`` when it
is set). No validation and no final test run. Writes a CSV (``iteration``, ``total``, one column per
tensor) and prints the ``--top`` largest steps with the tensors that make most of their squared norm.

With ``--next`` it then takes meta-step ``until + 1``'s batch from the replay's ``last.pt`` and prints,
per task: the task's own meta-gradient norm; its inner loop (support loss and support-gradient norm
per step); and, per adapted tensor, the query loss's gradient with respect to the adapted weights
against that with respect to the meta-learned initial tensor. The second over the first is how much
the derivative through the inner loop amplifies (about 1 when the inner loop is well inside its
stable step size).

    .venv/bin/python tools/meta_grad_by_tensor.py CONFIG_OR_RUN_DIR [key=value ...] --until 1668 \
        --out grads.csv [--top 5] [--next]

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
from innerloop.executors.grads import autograd_value_and_grad
from innerloop.experiments.build import build
from innerloop.experiments.checkpoint import load_checkpoint
from innerloop.experiments.config import apply_overrides, load, validate
from innerloop.experiments.run import read_run_config
from innerloop.types import Task


def recording_optimizer(rows: list[list[float]], names: list[str]):
    """A make_optimizer whose optimizer appends one row of per-tensor gradient norms per step."""
    original = training.make_optimizer

    def make(algo, tc):
        opt = original(algo, tc)
        meta = {id(q) for q in algo.meta_parameters()}
        named = [(n, p) for n, p in algo.named_parameters() if id(p) in meta]
        names[:] = [n for n, _ in named]
        step = opt.step

        def recorded_step(*args, **kwargs):
            rows.append([float(p.grad.detach().double().norm()) if p.grad is not None else 0.0 for _, p in named])
            return step(*args, **kwargs)

        opt.step = recorded_step
        return opt

    return make


def norm_of(grads) -> float:
    return float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))


def next_step(cfg, last: Path) -> None:
    """The tasks of the meta-step after ``last.pt``: per-task meta-gradient and inner-loop amplification."""
    family, algo = build(cfg)
    state = load_checkpoint(last, "last")
    algo.load_state_dict(state["algorithm"])
    gen = torch.Generator()
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    batch = family.sample(cfg.train.meta_batch, gen)
    params = algo.meta_parameters()
    algo.zero_grad(set_to_none=True)
    stats = algo.meta_backward(batch, state["path"])
    print(f"meta-step {state['iteration'] + 1}: query loss {stats['loss']:.4g}, meta-gradient norm "
          f"{norm_of(p.grad for p in params):.4g}")
    for i in range(cfg.train.meta_batch):
        task = Task(*(t[i] for t in batch))
        start = algo.params()
        out, res = algo.run_task(start, task, steps=algo.inner_steps, first_order=algo.first_order,
                                 value_and_grad=autograd_value_and_grad, training=True)
        query = algo.loss_fn(out, task.query_y)
        names = list(res.params)
        # one backward pass: the task's meta-gradient, and the query loss's gradient at both ends
        grads = torch.autograd.grad(query, [*(res.params[n] for n in names), *(start[n] for n in names), *params],
                                    allow_unused=True)
        at_end, at_start, meta = grads[: len(names)], grads[len(names) : 2 * len(names)], grads[2 * len(names) :]
        print(f"  task {i}: query loss {float(query.detach()):.4g}, its meta-gradient norm {norm_of(meta):.4g}")
        print("    support loss per inner step: " + " ".join(f"{float(v):.4g}" for v in res.support_losses))
        print("    support-gradient norm:       " + " ".join(f"{float(v):.4g}" for v in res.trace["support_grad_norm"]))
        for n, e, s0 in zip(names, at_end, at_start, strict=True):
            s0n = float(s0.norm()) if s0 is not None else 0.0
            print(f"    {n}: |dq/d adapted| {float(e.norm()):.3g}, |dq/d initial| {s0n:.3g}"
                  + (f" ({s0n / float(e.norm()):.3g}x)" if float(e.norm()) > 0 else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="a config file, or a run directory (its config.json)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--until", type=int, required=True, help="meta-steps to replay")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument("--top", type=int, default=5, help="largest steps to print")
    p.add_argument("--next", action="store_true", help="then trace the tasks of meta-step until + 1")
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
    run_dir = a.out.with_name(a.out.name + ".run")
    try:
        training.train(cfg, run_dir, overwrite=True, progress=False, stop_at=n)
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
    if a.next:
        next_step(cfg, run_dir / "last.pt")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
