"""Issue 14 (KFC "why not"): replay a KLin / KFC config's first meta-steps as training does, then trace the
inner loop on the tasks of the next meta-step, per inner step and adapted tensor: the support gradient's
norm, the update's norm, the largest factor norm and the scale ``s`` of the transform in use.

The replay draws the same batches and initial weights as ``innerloop train`` (same seed, Adam at
``train.meta_lr``, or ``train.rule_meta_lr`` for the rule's parameters, and ``train.clip_grad_norm``;
no ``train.lr_step`` schedule, so ``--at`` past the first lr step no longer follows the run), so
``--at 7`` shows the inner loop of the run's 7th meta-step. Nothing is written.

    .venv/bin/python tools/kfo_inner_trace.py CONFIG_OR_RUN_DIR [key=value ...] --at 7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from innerloop.executors.grads import autograd_value_and_grad
from innerloop.experiments.build import build
from innerloop.experiments.config import apply_overrides, load, validate
from innerloop.experiments.run import read_run_config
from innerloop.experiments.train import make_optimizer
from innerloop.rules.kfo import KroneckerOptimizer
from innerloop.types import Task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="a config file, or a run directory (its config.json)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--at", type=int, default=1, help="the meta-step whose tasks are traced (1 = the first)")
    a = p.parse_args()
    if a.config.is_dir():
        cfg = validate(apply_overrides(read_run_config(a.config), a.overrides))
    else:
        cfg = load(a.config, a.overrides)
    torch.set_num_threads(1)
    family, algo = build(cfg)
    if not isinstance(algo.rule, KroneckerOptimizer):
        raise SystemExit(f"rule {cfg.rule.name!r} is not KLin or KFC")
    tc, params = cfg.train, algo.meta_parameters()
    opt = make_optimizer(algo, tc)
    gen = torch.Generator().manual_seed(tc.seed)
    for it in range(1, a.at):
        batch = family.sample(tc.meta_batch, gen)
        algo.zero_grad(set_to_none=True)
        stats = algo.meta_backward(batch, "loop")
        norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad_norm or float("inf"))
        print(f"meta-step {it}: query loss {stats['loss']:.4g}, meta-gradient norm {float(norm):.3g}")
        opt.step()
    batch = family.sample(tc.meta_batch, gen)
    rule, update = algo.rule, algo.rule.update

    def traced(grads, state, params_, *, step, **kw):
        ups, new = update(grads, state, params_, step=step, **kw)
        for k, g in grads.items():
            xi = new.xi[k]
            factor = max(float(v.detach().norm()) for n, v in xi.items() if n != "s")
            s = f" s {float(xi['s']):+.3f}" if "s" in xi else ""
            print(f"  step {step} {k:24s} |g| {float(g.norm()):.3e}  |update| {float(ups[k].norm()):.3e}  "
                  f"max |factor| {factor:.3f}{s}")
        return ups, new

    rule.update = traced
    for i in range(tc.meta_batch):
        task = Task(*(t[i] for t in batch))
        print(f"meta-step {a.at}, task {i}:")
        out, res = algo.run_task(algo.params(), task, steps=algo.inner_steps, first_order=algo.first_order,
                                 value_and_grad=autograd_value_and_grad, training=True)
        losses = " ".join(f"{float(v):.4g}" for v in res.support_losses)
        print(f"  support loss before each step: {losses}; query loss {float(algo.loss_fn(out, task.query_y)):.4g}")


if __name__ == "__main__":
    main()
