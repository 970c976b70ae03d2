"""``innerloop upper-bound``: a small model trained to convergence on each test task alone.

KFO's reference point for the synthetic task: no meta-learning, no few-shot constraint. For each
of the run's test tasks (``eval.tasks`` tasks fixed by ``eval.seed``, the same tasks every trained
row of a table is scored on) a fresh copy of the config's model — from its default initialisation
(``train.seed``), or from a trained run's θ0 with ``init`` — is trained with full-batch Adam (or
SGD) for ``steps`` steps, learning rate annealed to 0 on a cosine, on the task's support set plus
``train_points`` more points drawn from the same task (:meth:`TaskFamily.fixed_tasks_with_source`),
then scored on the task's query set. Task ``i``'s extra points come from a generator seeded with
``data_seed · 2³² + i``, so a task's result does not depend on how tasks are batched.

Tasks are trained together (``torch.func.vmap`` over stacked per-task weights, ``eval.batch``
tasks at a time); the summed loss gives each task's weights their own gradient and Adam is
element-wise, so every task is trained independently of the others.

Defined for the synthetic families (sine, linear), whose tasks have explicit parameters from
which more data can be drawn. Image tasks have no such definition here (an episode's classes have
a fixed number of images, and "the task" is a choice of classes, not a distribution).
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt
from torch.func import functional_call

from innerloop.errors import UserError
from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.build import build
from innerloop.experiments.config import Config, ConfigError, to_dict
from innerloop.experiments.train import load_run, mean_ci
from innerloop.types import Task


class UpperBoundOptions(BaseModel):
    """Options of an upper-bound row (``[[row]] kind = "upper_bound"`` in a table file)."""

    model_config = ConfigDict(extra="forbid")
    train_points: NonNegativeInt = 2000  # extra labelled points per task (on top of its support set)
    steps: PositiveInt = 2000  # full-batch optimizer steps
    lr: PositiveFloat = 0.01
    optimizer: Literal["adam", "sgd"] = "adam"
    tasks: PositiveInt | None = None  # default: eval.tasks
    data_seed: NonNegativeInt = 0
    init: str | None = None  # a run directory (CLI) or, in a table, the name of another row

    def cli_args(self, init_dir: str | Path | None = None) -> list[str]:
        """The ``innerloop upper-bound`` flags for these options."""
        args = ["--train-points", str(self.train_points), "--steps", str(self.steps), "--lr", repr(self.lr),
                "--optimizer", self.optimizer, "--data-seed", str(self.data_seed)]
        if self.tasks is not None:
            args += ["--tasks", str(self.tasks)]
        if init_dir is not None:
            args += ["--init", str(init_dir)]
        return args


def _initial_params(cfg: Config, model: torch.nn.Module, init: str | Path | None) -> dict[str, torch.Tensor]:
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    if init is None:
        return params
    _, _, algo, _, _, _ = load_run(init)
    learned = dict(algo.model.named_parameters())
    if learned.keys() != params.keys() or any(learned[k].shape != params[k].shape for k in params):
        raise ConfigError(f"--init {init}: that run's model does not have the parameters of the config's model "
                          f"({cfg.model.name})")
    return {k: learned[k].detach().to(params[k]) for k in params}


def upper_bound(
    cfg: Config,
    out_dir: str | Path | None = None,
    options: UpperBoundOptions | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the config's model on each test task alone; return (and with ``out_dir`` write to
    ``out_dir/test.json``) a summary in the format of :func:`~innerloop.experiments.train.evaluate_run`."""
    o = options or UpperBoundOptions()
    if o.init is not None and not Path(o.init, "config.json").is_file():
        raise ConfigError(f"--init {o.init}: not a run directory (no config.json)")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "last.pt").exists():
        raise ConfigError(f"{out} holds a training run (last.pt); write the upper bound to another directory")
    t0 = time.perf_counter()
    family, algo = build(cfg)
    model = algo.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    n = o.tasks or cfg.eval.tasks
    try:
        tasks, source = family.for_split("test").fixed_tasks_with_source(n, cfg.eval.seed)
    except NotImplementedError:
        raise UserError(f"upper bound is defined for synthetic task families (sine, linear), not task.name = "
                        f"{cfg.task.name!r}") from None
    theta0 = _initial_params(cfg, model, o.init)

    def task_loss(p, x, y):
        return family.loss(functional_call(model, p, (x,)), y)

    def task_eval(p, x, y):
        out_ = functional_call(model, p, (x,))
        return family.loss(out_, y), family.metric(out_, y)

    batched_loss = torch.vmap(task_loss)
    batched_eval = torch.vmap(task_eval)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    losses, metrics, train_losses, train_metrics = [], [], [], []
    for start in range(0, n, cfg.eval.batch):
        stop = min(start + cfg.eval.batch, n)
        extra = [source[i : i + 1].draw(o.train_points, torch.Generator().manual_seed(o.data_seed * 2**32 + i))
                 for i in range(start, stop)]
        x = cast(torch.cat([tasks.support_x[start:stop], torch.cat([e[0] for e in extra])], 1))
        y = cast(torch.cat([tasks.support_y[start:stop], torch.cat([e[1] for e in extra])], 1))
        chunk = Task(*(cast(t[start:stop]) for t in tasks))
        params = {k: v.unsqueeze(0).repeat(stop - start, *([1] * v.dim())).requires_grad_() for k, v in theta0.items()}
        opt_cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.SGD
        opt = opt_cls(params.values(), lr=o.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / o.steps)))
        for _ in range(o.steps):
            opt.zero_grad(set_to_none=True)
            batched_loss(params, x, y).sum().backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            tl, tm = batched_eval(params, x, y)
            ql, qm = batched_eval(params, chunk.query_x, chunk.query_y)
        if not torch.isfinite(tl).all():
            raise UserError(f"upper bound: the training loss is not finite (tasks {start}..{stop - 1}); lower --lr")
        losses.append(ql)
        metrics.append(qm)
        train_losses.append(tl)
        train_metrics.append(tm)
        if progress:
            print(f"upper bound: {stop}/{n} tasks", flush=True)
    metric = torch.cat(metrics)
    mean, ci = mean_ci(metric)
    res: dict[str, Any] = {
        "metric": family.metric_name,
        "mean": mean,
        "ci95": ci,
        "tasks": int(metric.numel()),
        "query_loss": mean_ci(torch.cat(losses))[0],
        "support_loss_per_step": [],
        "trace": {},
        "name": cfg.name,
        "kind": "upper_bound",
        "checkpoint": None,
        "iteration": None,
        "val": None,
        "inner_steps": None,
        # how well each task's model fits its own training data (close to the optimum = converged)
        "train_loss": mean_ci(torch.cat(train_losses))[0],
        "train_metric": mean_ci(torch.cat(train_metrics))[0],
        **o.model_dump(exclude={"tasks", "init"}),  # "tasks" above is the number actually scored
        "train_seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if o.init is not None:
        res["init"] = str(o.init)
    if out is not None:
        ckpt.save_json(to_dict(cfg), out / "config.json")
        ckpt.save_json(res, out / "test.json")
    return res
