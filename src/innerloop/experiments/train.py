"""Meta-training and evaluation of one configured run.

:func:`train` is the loop (meta-step, log, validate, checkpoint) and the final test; the run
directory (lock, fresh or resumed start, files) is :class:`~innerloop.experiments.run.Run`'s,
signals are :mod:`~innerloop.experiments.stop`'s. :func:`evaluate_run` re-tests a finished run.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from innerloop import registry
from innerloop.algorithms import EvalOutput, MetaAlgorithm
from innerloop.data import TaskFamily
from innerloop.data.prefetch import Prefetcher
from innerloop.errors import UserError
from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments import cross_domain, distributed, faults
from innerloop.experiments.build import build, choose_path
from innerloop.experiments.config import Config, ConfigError, TrainConfig, validate
from innerloop.experiments.run import Run, read_run_config
from innerloop.experiments.stop import Stop
from innerloop.types import Task


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite; ``last.pt`` still holds the last finite checkpoint."""


class RunInterrupted(RuntimeError):
    """Training stopped early (SIGINT, SIGTERM or ``stop_at``); the message says what ``last.pt`` holds.

    ``status`` is the exit status the CLI uses: 128 + the signal's number (130 for SIGINT and for
    ``stop_at``, 143 for SIGTERM)."""

    def __init__(self, message: str, status: int = 130):
        super().__init__(message)
        self.status = status


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 · std / √N`` (sample std) over tasks."""
    v = values.detach().double().cpu()
    n = v.numel()
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return v.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate_tasks(
    algo: MetaAlgorithm, tasks: Task, *, path: str, batch: int, steps: int | None = None, fault: str = "evaluate"
) -> EvalOutput:
    """Evaluate ``algo`` on every task of ``tasks`` (``batch`` tasks at a time).

    In a multi-process run the executor is :class:`~innerloop.executors.Distributed`: each rank
    evaluates ``batch`` tasks of every ``batch × ranks``, and every rank gets all results, in task
    order (on the CPU)."""
    dev = next(algo.parameters()).device
    dtype = next(algo.parameters()).dtype
    ex = distributed.executor_for(algo.executor(path))
    step = batch * distributed.world_size()
    outs = []
    for i in range(0, tasks.num_tasks, step):
        chunk = Task(*(_cast(t[i : i + step], dev, dtype) for t in tasks))
        outs.append(algo.evaluate(chunk, ex, steps))
        faults.point(fault)
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _restore(state: dict[str, Any], where: Path, algo: nn.Module, opt, sched, gen: torch.Generator) -> None:
    """Put a ``last.pt`` state back into the run's objects (a mismatch is one CheckpointError)."""
    try:
        algo.load_state_dict(state["algorithm"])
        if (opt is None) != (state["optimizer"] is None) or (sched is None) != (state["scheduler"] is None):
            raise ValueError("it has a different outer optimizer or schedule")
        if opt is not None:
            opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ckpt.CheckpointError(f"checkpoint {where} does not fit this run's model and optimizer "
                                   f"({_first_line(e)})") from None


def _load_weights(algo: nn.Module, f: Path) -> dict[str, Any]:
    state = ckpt.load_checkpoint(f, "best")
    try:
        algo.load_state_dict(state["algorithm"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {f} does not fit the run's model ({_first_line(e)})") from None
    return state


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Meta-train, validate, checkpoint and test one run; return the test summary.

    A fresh run needs an empty (or new) ``out_dir``; ``overwrite`` replaces a run in it. With
    ``resume`` the run continues from ``out_dir/last.pt`` exactly (same tasks, same optimizer
    state, same random streams); only ``train.iterations`` may differ from the stored config, and
    not below what the run has done. ``stop_at`` ends training after that iteration (as a signal
    would) and raises :class:`RunInterrupted`. SIGINT and SIGTERM finish the current iteration,
    write ``last.pt`` and raise :class:`RunInterrupted` (see :mod:`innerloop.experiments.stop`).

    Launched by torchrun (``WORLD_SIZE`` > 1) the meta-batch is split across the processes and
    rank 0 alone writes files; see :mod:`innerloop.experiments.distributed`.
    """
    distributed.init(cfg.train.device)  # no-op for one process; the group lives until the process exits
    distributed.check_meta_batch(cfg.train.meta_batch)
    faults.arm_from_env()
    run = Run(cfg, out_dir, resume=resume, overwrite=overwrite, main=distributed.is_main())
    try:
        with run:
            distributed.barrier()  # rank 0 has prepared the run directory before any rank reads it
            run.phase = "training"
            trained = _meta_train(cfg, run, progress, stop_at)
            run.phase = "the final test"
            distributed.barrier()  # best.pt and last.pt are on disk before any rank reads them
            return _final_test(cfg, run, *trained)
    except Stop as s:
        raise RunInterrupted(run.stopped(s), s.status) from None


def _meta_train(cfg: Config, run: Run, progress: bool, stop_at: int | None
                ) -> tuple[TaskFamily, MetaAlgorithm, str, float]:
    """The meta-training loop; returns what the final test needs (family, algorithm, path, seconds)."""
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
    # the largest meta-gradient norm since the last training row: one huge step can fill Adam's second
    # moment and stall every meta-parameter for thousands of steps while loss and metric look merely flat
    grad_max = torch.zeros((), dtype=torch.float64, device=device)

    state = run.resume_state
    if state is not None:
        _restore(state, run.last, algo, opt, sched, gen)
        start, best_score, best_it = state["iteration"], float(state["best_score"]), state["best_iteration"]
        path = state["path"]
        seconds_before = float(state.get("train_seconds", 0.0))
        grad_max.fill_(float(state.get("grad_norm_max", 0.0)))  # checkpoints written before it was kept: 0
    else:
        run.log(event="start", path=path, meta_parameters=sum(p.numel() for p in params))
    executor = distributed.executor_for(algo.executor(path))  # under torchrun: Distributed around it
    distributed.broadcast_module(algo)
    gen_state = gen.get_state()  # the generator after the batches of the iterations done, as last.pt keeps it
    t0 = time.perf_counter()

    def seconds() -> float:
        return seconds_before + time.perf_counter() - t0

    run.clock = seconds  # every metrics row (validation, test) gets it as ``seconds``

    def save_last(it: int) -> None:
        run.save_last({
            "iteration": it,
            "algorithm": algo.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "generator": gen_state,
            "torch_rng": torch.get_rng_state(),
            "best_score": best_score,
            "best_iteration": best_it,
            "path": path,
            "train_seconds": seconds(),
            "grad_norm_max": float(grad_max),
        })

    # batches are drawn ahead in a thread; an iteration takes the generator state that came with
    # its batch only once it is complete, so a stop never skips a batch drawn but not applied
    feed = Prefetcher(family.sample, tc.meta_batch, gen, tc.prefetch) if start < tc.iterations else None
    bar = tqdm(total=tc.iterations, initial=start, disable=not (progress and run.main), desc=cfg.name,
               dynamic_ncols=True)
    postfix: dict[str, str] = {}
    it = start
    try:
        while it < tc.iterations:
            with run.stops.deferred():  # a signal now is acted on once this iteration is complete
                batch = Task(*(_cast(t, device, dtype) for t in feed.next()))
                algo.zero_grad(set_to_none=True)
                stats = algo.meta_backward(batch, executor)
                faults.point("meta_step")
                if not all(math.isfinite(v) for v in stats.values()):
                    raise TrainingDiverged(
                        f"meta-loss is not finite at iteration {it + 1} ({stats}); lower train.meta_lr or the "
                        f"rule's lr, or set train.clip_grad_norm ({run.checkpoint_note()})")
                if opt is not None:
                    if tc.clip_grad_norm is not None:  # returns the norm before clipping
                        norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad_norm)
                    else:
                        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                    grad_max = torch.maximum(grad_max, norm.to(grad_max))  # NaN propagates: logged as null
                    opt.step()
                    if sched is not None:
                        sched.step()
                it += 1
                gen_state = feed.state_after
                if it % tc.log_every == 0 or it == tc.iterations:
                    row = {"grad_norm_max": float(grad_max)} if opt is not None else {}
                    run.log(iteration=it, loss=stats["loss"], metric=stats["metric"], **row, seconds=seconds())
                    grad_max.zero_()
                    postfix["loss"] = f"{stats['loss']:.4g}"
                if it % tc.val_every == 0 or it == tc.iterations:
                    v = summarize(evaluate_tasks(algo, val_tasks, path=path, batch=cfg.eval.batch,
                                                 fault="validate"), family)
                    score = sign * v["mean"]
                    if score > best_score:
                        best_score, best_it = score, it
                        run.save_best(it, algo.state_dict(), v)
                    run.log(iteration=it, val=v["mean"], val_ci95=v["ci95"], best_iteration=best_it)
                    postfix["val"] = f"{v['mean']:.4g}"
                if it % tc.checkpoint_every == 0 or it == tc.iterations:
                    save_last(it)
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            stopping = run.stops.pending is not None or (stop_at is not None and stop_at <= it < tc.iterations)
            if stopping:
                if run.saved_iteration != it:
                    save_last(it)
                run.stops.check()
                raise RunInterrupted(f"stopped at iteration {it}; {run.checkpoint_note()}")
    finally:
        bar.close()
        if feed is not None:
            feed.close()
    if run.saved_iteration != it:  # zero iterations to do: last.pt still marks the run as trained
        save_last(it)
    return family, algo, path, seconds()


def _final_test(cfg: Config, run: Run, family: TaskFamily, algo: MetaAlgorithm, path: str, seconds: float
                ) -> dict[str, Any]:
    """Test the best validation weights (``last.pt`` when no validation improved) and write test.json."""
    f = run.best if run.best.exists() else run.last
    state = _load_weights(algo, f)
    test_tasks = family.for_split("test").fixed_tasks(cfg.eval.tasks, cfg.eval.seed)
    out = evaluate_tasks(algo, test_tasks, path=path, batch=cfg.eval.batch, fault="test")
    res = summarize(out, family)
    res.update(name=cfg.name, checkpoint="best", iteration=state["iteration"], val=state.get("val", {}).get("mean"),
               inner_steps=algo.eval_inner_steps, path=path, iterations=run.saved_iteration, train_seconds=seconds,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    # each test task's value, for paired comparisons between runs on the same fixed tasks
    run.write_test(res, {family.metric_name: out.metric.double().tolist(), "query_loss": out.loss.double().tolist()})
    return res


def load_run(run_dir: str | Path, which: str = "best", *, device: str | None = None, dataset: str | None = None,
             root: str | None = None, split_file: str | None = None
             ) -> tuple[Config, TaskFamily, MetaAlgorithm, str, int, float | None]:
    """Rebuild a run from its directory and load ``best.pt`` (or ``last.pt`` where there is no
    best yet); return the config, task family, algorithm, execution path, checkpoint iteration and
    the checkpoint's validation score (``None`` for ``last.pt``). ``device`` replaces ``train.device``;
    ``dataset`` (with ``root``, ``split_file``) replaces the test set (:mod:`.cross_domain`)."""
    out = Path(run_dir)
    try:
        cfg = validate(read_run_config(out))
    except ConfigError as e:
        raise ConfigError(f"{out}/config.json: {e}") if str(e).startswith("config error") else e from None
    if device is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": device})})
    if dataset is not None:
        cfg = cross_domain.with_test_dataset(cfg, dataset, root, split_file)
    family, algo = build(cfg)
    f = out / f"{which}.pt"
    if which == "best" and not f.exists():
        f = out / "last.pt"
    if not f.exists():
        raise ConfigError(f"{out} has no checkpoint ({which}.pt or last.pt)")
    state = _load_weights(algo, f)
    path = state.get("path") or choose_path(algo, cfg.train.execution, next(algo.parameters()).device)
    if not isinstance(path, str) or path not in registry.names("executor"):
        raise ckpt.CheckpointError(f"checkpoint {f} names an unknown execution path {path!r}")
    val = state.get("val", {}).get("mean") if isinstance(state.get("val"), dict) else None
    return cfg, family, algo, path, state["iteration"], val


def eval_file_name(which: str, steps: int, tasks: int, dataset: str | None = None) -> str:
    """Where ``innerloop eval`` writes its result in the run directory: named by its settings (and the
    cross-domain test dataset), so that it never replaces test.json (train's) or another setting's result."""
    where = f"{cross_domain.file_tag(dataset)}-" if dataset is not None else ""
    return f"eval-{where}{which}-steps{steps}-tasks{tasks}.json"


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    which: str = "best",
    write: bool = True,
    device: str | None = None,
    dataset: str | None = None,
    root: str | None = None,
    split_file: str | None = None,
) -> dict[str, Any]:
    """Test a run's ``which`` checkpoint on ``tasks`` test tasks (default ``eval.tasks``, fixed by
    ``eval.seed``) with ``steps`` inner steps (default ``algorithm.eval_inner_steps``), on ``device``
    (default the run's), on the test split of ``dataset`` under ``root`` (default the run's test set).
    With ``write`` the result goes to :func:`eval_file_name` in the run directory (its path is the
    result's ``file``)."""
    for flag, v in (("tasks", tasks), ("steps", steps)):
        if v is not None and v < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {v}")
    cross_domain.check_options(dataset, root, split_file)
    out = Path(run_dir)
    cfg, family, algo, path, iteration, val = load_run(out, which, device=device, dataset=dataset, root=root,
                                                       split_file=split_file)
    n = cfg.eval.tasks if tasks is None else tasks
    test_tasks = family.for_split("test").fixed_tasks(n, cfg.eval.seed)
    res = summarize(cross_domain.evaluate(lambda: evaluate_tasks(algo, test_tasks, path=path, batch=cfg.eval.batch,
                                                                 steps=steps), dataset), family)
    res.update(name=cfg.name, checkpoint=which, iteration=iteration, val=val,
               inner_steps=algo.eval_inner_steps if steps is None else steps, path=path)
    if dataset is not None:
        res.update(dataset=dataset, root=root, split_file=split_file)
    if write and distributed.is_main():
        f = out / eval_file_name(which, res["inner_steps"], n, dataset)
        try:
            ckpt.save_json(res, f)
        except OSError as e:
            raise UserError(f"cannot write {f}: {e.strerror} (pass --no-write to only print the result)") from None
        res["file"] = str(f)
    return res
