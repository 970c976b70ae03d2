"""``innerloop upper-bound``: a small model trained to convergence on each test task alone.

KFO's reference point (the synthetic task of §3.2 and the "upper bound" column of Table 2, "we train
the model on individual tasks to convergence"): no meta-learning, no few-shot constraint. For each
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

"More points from the same task" is defined by the task family. Synthetic families (sine,
linear) draw fresh points from the task's parameters. An image task is its ``n_way`` classes with
their labels: its extra points are other images of those classes, neither in its support nor its
query set (with the task's rotation), ``train_points // n_way`` per class and at most what every
class of the split has to spare (Omniglot and the glyphs: 20 images per class, so 10 more at
10-way 5-shot with 5 query images; miniImageNet and CIFAR-FS: 600). ``extra_points`` in the
result is the number each task was given.
"""

from __future__ import annotations

import json
import math
import resource
import signal
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt
from torch.func import functional_call

from innerloop.errors import UserError
from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.build import build
from innerloop.experiments.config import Config, ConfigError, config_diff, to_dict
from innerloop.experiments.lock import RunLock
from innerloop.experiments.stop import Stop
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


PARTIAL = "upper_bound_partial.json"  # the tasks finished so far, until test.json is written


def _tasks_done(record: dict[str, Any]) -> int:
    """How many tasks a partial record holds (its groups are consecutive from task 0)."""
    return int(record["chunks"][-1]["stop"]) if record["chunks"] else 0


def _read_partial(path: Path) -> tuple[dict[str, Any], int]:
    """The stored partial record and the number of tasks it holds; ValueError if it is damaged."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        done = _tasks_done(stored)
        float(stored["seconds"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__})") from None
    return stored, done


def partial_progress(out: Path) -> tuple[int, float | None]:
    """Tasks an unfinished upper bound in ``out`` has finished, and its seconds per task (None before one)."""
    try:
        stored, done = _read_partial(out / PARTIAL)
    except ValueError:
        return 0, None
    return done, (float(stored["seconds"]) / done if done else None)


def _start_or_resume(out: Path, record: dict[str, Any], n: int, resume: bool) -> dict[str, Any]:
    """The partial record to continue in ``out``: the stored one when resuming (it must be of the same
    config and options), else a fresh one."""
    path = out / PARTIAL
    if resume and not (out / "config.json").is_file():
        raise ConfigError(f"nothing to resume in {out} (no config.json); start the upper bound without --resume")
    if not path.is_file():
        return record
    try:
        stored, done = _read_partial(path)
    except ValueError as e:
        raise ConfigError(f"{e}; remove it to start the upper bound again") from None
    if not resume:
        raise ConfigError(f"{out} holds an unfinished upper bound ({done} of {n} tasks); pass --resume to "
                          "continue it, or use another --out")
    changed = [*(f"config {k}" for k in config_diff(stored.get("config", {}), record["config"])),
               *(f"option {k}" for k in sorted(set(stored.get("options", {})) | set(record["options"]))
                 if stored.get("options", {}).get(k) != record["options"].get(k))]
    if changed:
        raise ConfigError(f"cannot resume {out}: the unfinished upper bound there differs ({', '.join(changed)}); "
                          "use another --out")
    return stored


def upper_bound(
    cfg: Config,
    out_dir: str | Path | None = None,
    options: UpperBoundOptions | None = None,
    *,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the config's model on each test task alone; return (and with ``out_dir`` write to
    ``out_dir/test.json``) a summary in the format of :func:`~innerloop.experiments.train.evaluate_run`.

    With ``out_dir``, the directory is locked while it runs and every finished group of ``eval.batch``
    tasks is recorded in ``upper_bound_partial.json``; after an interruption, ``resume=True`` trains
    the remaining tasks only (each task's training depends on nothing but its own index, so the
    result is that of an uninterrupted run)."""
    o = options or UpperBoundOptions()
    if o.init is not None and not Path(o.init, "config.json").is_file():
        raise ConfigError(f"--init {o.init}: not a run directory (no config.json)")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "last.pt").exists():
        raise ConfigError(f"{out} holds a training run (last.pt); write the upper bound to another directory")
    if out is None:
        return _upper_bound(cfg, None, o, progress, None)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _upper_bound(cfg, out, o, progress, resume)


def _upper_bound(cfg: Config, out: Path | None, o: UpperBoundOptions, progress: bool,
                 resume: bool | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    family, algo = build(cfg)
    model = algo.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    n = o.tasks or cfg.eval.tasks
    try:
        tasks, source = family.for_split("test").fixed_tasks_with_source(n, cfg.eval.seed)
    except NotImplementedError:
        raise UserError(f"upper bound needs a task family that can draw more points of a task (sine, linear, "
                        f"images), not task.name = {cfg.task.name!r}") from None
    theta0 = _initial_params(cfg, model, o.init)
    record: dict[str, Any] = {"config": json.loads(ckpt.json_text(to_dict(cfg))),
                              "options": json.loads(ckpt.json_text(o.model_dump())), "chunks": [], "seconds": 0.0}
    if out is not None:
        record = _start_or_resume(out, record, n, bool(resume))
        ckpt.save_json(to_dict(cfg), out / "config.json")  # from now on a resumable run directory
    done = _tasks_done(record)

    def task_loss(p, x, y):
        return family.loss(functional_call(model, p, (x,)), y)

    def task_eval(p, x, y):
        out_ = functional_call(model, p, (x,))
        return family.loss(out_, y), family.metric(out_, y)

    batched_loss = torch.vmap(task_loss)
    batched_eval = torch.vmap(task_eval)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    def train_chunk(start: int, stop: int) -> dict[str, Any]:
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
        return {"start": start, "stop": stop, "extra_points": extra[0][0].shape[1], "query_loss": ql.tolist(),
                "query_metric": qm.tolist(), "train_loss": tl.tolist(), "train_metric": tm.tolist()}

    try:
        for start in range(done, n, cfg.eval.batch):
            record["chunks"].append(train_chunk(start, min(start + cfg.eval.batch, n)))
            if out is not None:
                ckpt.save_json({**record, "seconds": record["seconds"] + time.perf_counter() - t0}, out / PARTIAL)
            if progress:
                print(f"upper bound: {_tasks_done(record)}/{n} tasks", flush=True)
    except (KeyboardInterrupt, Stop) as e:
        stop = e if isinstance(e, Stop) else Stop(signal.SIGINT)
        if out is not None:
            stop.detail = f"{_tasks_done(record)} of {n} tasks are kept in {out / PARTIAL}; --resume continues"
        raise stop from None

    def column(key: str) -> torch.Tensor:
        return torch.tensor([v for c in record["chunks"] for v in c[key]], dtype=dtype)

    metric = column("query_metric")
    mean, ci = mean_ci(metric)
    res: dict[str, Any] = {
        "metric": family.metric_name,
        "mean": mean,
        "ci95": ci,
        "tasks": int(metric.numel()),
        "query_loss": mean_ci(column("query_loss"))[0],
        "support_loss_per_step": [],
        "trace": {},
        "name": cfg.name,
        "kind": "upper_bound",
        "checkpoint": None,
        "iteration": None,
        "val": None,
        "inner_steps": None,
        # how well each task's model fits its own training data (close to the optimum = converged)
        "train_loss": mean_ci(column("train_loss"))[0],
        "train_metric": mean_ci(column("train_metric"))[0],
        **o.model_dump(exclude={"tasks", "init"}),  # "tasks" above is the number actually scored
        # per task, beside its support set (images: capped by what the classes hold)
        "extra_points": record["chunks"][0]["extra_points"] if record["chunks"] else 0,
        "train_seconds": record["seconds"] + time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if o.init is not None:
        res["init"] = str(o.init)
    if out is not None:
        ckpt.save_json(res, out / "test.json")
        (out / PARTIAL).unlink(missing_ok=True)
    return res
