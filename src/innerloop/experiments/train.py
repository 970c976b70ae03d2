"""Meta-training and evaluation of one configured run.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
log line), ``last.pt`` (everything needed to resume exactly), ``best.pt`` (best validation
weights) and ``test.json`` (the final test on fixed tasks, from ``best.pt``).
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from innerloop.algorithms import EvalOutput, MetaAlgorithm
from innerloop.data import TaskFamily
from innerloop.data.prefetch import Prefetcher
from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments import distributed
from innerloop.experiments.build import build, choose_path
from innerloop.experiments.config import Config, ConfigError, TrainConfig, to_dict, validate
from innerloop.types import Task

#: keys of the config that may change when a run is resumed
RESUMABLE_CHANGES = {"train.iterations"}


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite; ``last.pt`` still holds the last finite checkpoint."""


class RunInterrupted(RuntimeError):
    """Training stopped early (Ctrl-C or ``stop_at``); ``last.pt`` holds the state to resume from."""


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 · std / √N`` (sample std) over tasks."""
    v = values.detach().double().cpu()
    n = v.numel()
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return v.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate_tasks(
    algo: MetaAlgorithm, tasks: Task, *, path: str, batch: int, steps: int | None = None
) -> EvalOutput:
    """Evaluate ``algo`` on every task of ``tasks`` (``batch`` tasks at a time).

    In a multi-process run each rank evaluates its contiguous share of the tasks and every rank
    gets all results, in task order (on the CPU)."""
    dev = next(algo.parameters()).device
    dtype = next(algo.parameters()).dtype
    lo, hi = distributed.shard(tasks.num_tasks)
    outs = []
    for i in range(lo, hi, batch):
        chunk = Task(*(_cast(t[i : min(i + batch, hi)], dev, dtype) for t in tasks))
        outs.append(algo.evaluate(chunk, path, steps))
    outs = distributed.gather_list(outs)
    return EvalOutput(
        torch.cat([o.loss for o in outs]),
        torch.cat([o.metric for o in outs]),
        torch.cat([o.support_losses for o in outs]),
        {k: torch.cat([o.trace[k] for o in outs]) for k in outs[0].trace},
    )


def _cast(t: torch.Tensor, device, dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def summarize(out: EvalOutput, family: TaskFamily) -> dict[str, Any]:
    mean, ci = mean_ci(out.metric)
    return {
        "metric": family.metric_name,
        "mean": mean,
        "ci95": ci,
        "tasks": int(out.metric.numel()),
        "query_loss": mean_ci(out.loss)[0],
        "support_loss_per_step": out.support_losses.double().mean(0).tolist(),
        "trace": {k: v.double().mean(0).tolist() for k, v in out.trace.items()},
    }


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out


class _Logger:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def __call__(self, **row: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def make_optimizer(algo: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer | None:
    """The outer optimizer of ``algo.meta_parameters()``, or None when there is nothing to learn.

    With ``rule_meta_lr`` set there are two parameter groups: the model's (its meta-learned
    initialisation, lr ``meta_lr``) and the rest, i.e. the update rule's and the geometry's (lr
    ``rule_meta_lr``); otherwise one group (so earlier checkpoints resume unchanged).
    """
    params = algo.meta_parameters()
    if not params:  # random init + plain SGD (ALFA's "Random" row): nothing to train, only test
        return None
    groups: list[dict[str, Any]] = [{"params": params}]
    if tc.rule_meta_lr is not None:
        model_ids = {id(p) for p in algo.model.parameters()}
        groups = [
            {"params": [p for p in params if id(p) in model_ids], "lr": tc.meta_lr},
            {"params": [p for p in params if id(p) not in model_ids], "lr": tc.rule_meta_lr},
        ]
        groups = [g for g in groups if g["params"]]
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=tc.meta_lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(groups, lr=tc.meta_lr, momentum=tc.momentum, nesterov=tc.nesterov,
                           weight_decay=tc.weight_decay)


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Meta-train, validate, checkpoint and test one run; return the test summary.

    With ``resume`` the run continues from ``out_dir/last.pt`` exactly (same tasks, same optimizer
    state, same random streams); only ``train.iterations`` may differ from the stored config.
    ``stop_at`` ends training after that iteration (as an interruption would) and raises
    :class:`RunInterrupted`.

    Launched by torchrun (``WORLD_SIZE`` > 1) the meta-batch is split across the processes and
    rank 0 alone writes files; see :mod:`innerloop.experiments.distributed`.
    """
    distributed.init(cfg.train.device)  # no-op for one process; the group lives until the process exits
    distributed.check_meta_batch(cfg.train.meta_batch)
    out = Path(out_dir)
    main = distributed.is_main()
    last, best = out / "last.pt", out / "best.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out} already holds a run (last.pt); pass --resume to continue it or use another --out")
    if resume:
        if not last.exists():
            raise ConfigError(f"nothing to resume: {last} does not exist")
        stored = json.loads((out / "config.json").read_text())
        changed = [k for k in _diff(stored, to_dict(cfg)) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"cannot resume {out}: the config differs from the stored one in {', '.join(changed)} "
                f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
            )
    distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_json(to_dict(cfg), out / "config.json")
    log = _Logger(out / "metrics.jsonl", enabled=main)

    family, algo = build(cfg)
    device = next(algo.parameters()).device
    dtype = next(algo.parameters()).dtype
    path = choose_path(algo, cfg.train.execution, device)
    tc = cfg.train
    params = algo.meta_parameters()  # for clipping and the all-reduce; make_optimizer groups them
    opt = make_optimizer(algo, tc)  # None when there is nothing to train (random init + plain SGD)
    sched = torch.optim.lr_scheduler.StepLR(opt, tc.lr_step, tc.lr_gamma) if opt is not None and tc.lr_step else None
    gen = torch.Generator().manual_seed(tc.seed)
    val_tasks = family.for_split("val").fixed_tasks(tc.val_tasks, tc.val_seed)
    sign = 1.0 if family.higher_is_better else -1.0
    start, best_score, best_it, seconds_before = 0, -math.inf, -1, 0.0

    if resume:
        state = ckpt.load_torch(last, map_location=device)
        algo.load_state_dict(state["algorithm"])
        if opt is not None:
            opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, best_score, best_it = state["iteration"], state["best_score"], state["best_iteration"]
        path = state["path"]
        seconds_before = state.get("train_seconds", 0.0)
        log(event="resume", iteration=start)
    else:
        log(event="start", path=path, meta_parameters=sum(p.numel() for p in params))
    distributed.broadcast_module(algo)

    def save_last(it: int) -> None:
        if not main:
            return
        ckpt.save_torch(
            {
                "iteration": it,
                "algorithm": algo.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "generator": feed.state_after if feed is not None else gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "best_score": best_score,
                "best_iteration": best_it,
                "path": path,
                "train_seconds": seconds_before + time.perf_counter() - t0,
            },
            last,
        )

    t0 = time.perf_counter()
    # batches are drawn ahead in a thread; the checkpoint keeps the generator state after the last
    # batch consumed, so resuming draws the same batches as an uninterrupted run
    feed = Prefetcher(family.sample, tc.meta_batch, gen, tc.prefetch) if start < tc.iterations else None
    bar = tqdm(total=tc.iterations, initial=start, disable=not (progress and main), desc=cfg.name,
               dynamic_ncols=True)
    postfix: dict[str, str] = {}
    it = start
    try:
        while it < tc.iterations:
            batch = distributed.split_batch(feed.next())  # this rank's tasks (all of them for one process)
            batch = Task(*(_cast(t, device, dtype) for t in batch))
            algo.zero_grad(set_to_none=True)
            stats = distributed.mean_stats(algo.meta_backward(batch, path), device)
            distributed.all_reduce_grads(params)
            if not all(math.isfinite(v) for v in stats.values()):
                raise TrainingDiverged(
                    f"meta-loss is not finite at iteration {it + 1} ({stats}); lower train.meta_lr or the "
                    f"rule's lr, or set train.clip_grad_norm (last checkpoint: {last})")
            if opt is not None:
                if tc.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, tc.clip_grad_norm)
                opt.step()
                if sched is not None:
                    sched.step()
            it += 1
            if it % tc.log_every == 0 or it == tc.iterations:
                log(iteration=it, loss=stats["loss"], metric=stats["metric"], seconds=time.perf_counter() - t0)
                postfix["loss"] = f"{stats['loss']:.4g}"
            if it % tc.val_every == 0 or it == tc.iterations:
                v = summarize(evaluate_tasks(algo, val_tasks, path=path, batch=cfg.eval.batch), family)
                score = sign * v["mean"]
                if score > best_score:
                    best_score, best_it = score, it
                    if main:
                        ckpt.save_torch({"iteration": it, "algorithm": algo.state_dict(), "val": v}, best)
                log(iteration=it, val=v["mean"], val_ci95=v["ci95"], best_iteration=best_it)
                postfix["val"] = f"{v['mean']:.4g}"
            if it % tc.checkpoint_every == 0 or it == tc.iterations:
                save_last(it)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if stop_at is not None and it >= stop_at and it < tc.iterations:
                save_last(it)
                raise RunInterrupted(f"stopped at iteration {it}")
    except KeyboardInterrupt:
        save_last(it)
        raise RunInterrupted(f"interrupted at iteration {it}; continue with --resume") from None
    finally:
        bar.close()
        if feed is not None:
            feed.close()
    if not last.exists():  # zero iterations
        save_last(it)
    distributed.barrier()  # best.pt and last.pt are on disk before any rank reads them
    return evaluate_run(out, extra={
        "iterations": it,
        "train_seconds": seconds_before + time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def load_run(run_dir: str | Path, which: str = "best"
             ) -> tuple[Config, TaskFamily, MetaAlgorithm, str, int, float | None]:
    """Rebuild a run from its directory and load ``best.pt`` (or ``last.pt`` where there is no
    best yet); return the config, task family, algorithm, execution path, checkpoint iteration and
    the checkpoint's validation score (``None`` for ``last.pt``)."""
    out = Path(run_dir)
    if not (out / "config.json").is_file():
        raise ConfigError(f"{out} is not a run directory (no config.json)")
    cfg = validate(json.loads((out / "config.json").read_text()))
    family, algo = build(cfg)
    f = out / f"{which}.pt"
    if which == "best" and not f.exists():
        f = out / "last.pt"
    if not f.exists():
        raise ConfigError(f"{out} has no checkpoint ({which}.pt or last.pt)")
    state = ckpt.load_torch(f, map_location=next(algo.parameters()).device)
    algo.load_state_dict(state["algorithm"])
    path = state.get("path") or choose_path(algo, cfg.train.execution, next(algo.parameters()).device)
    return cfg, family, algo, path, state["iteration"], state.get("val", {}).get("mean")


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    which: str = "best",
    write: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test on ``eval.tasks`` tasks fixed by ``eval.seed``, from the best-validation weights."""
    out = Path(run_dir)
    cfg, family, algo, path, iteration, val = load_run(out, which)
    n = tasks or cfg.eval.tasks
    test_tasks = family.for_split("test").fixed_tasks(n, cfg.eval.seed)
    res = summarize(evaluate_tasks(algo, test_tasks, path=path, batch=cfg.eval.batch, steps=steps), family)
    res.update(
        name=cfg.name,
        checkpoint=which,
        iteration=iteration,
        val=val,
        inner_steps=steps or algo.eval_inner_steps,
        path=path,
        **(extra or {}),
    )
    if write and distributed.is_main():
        ckpt.save_json(res, out / "test.json")
        _Logger(out / "metrics.jsonl")(event="test", **{k: res[k] for k in ("mean", "ci95", "tasks")})
    return res
