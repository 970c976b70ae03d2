"""Turn a validated :class:`Config` into objects: task family, model, rule, meta-algorithm — each
looked up by name in :mod:`innerloop.registry` (no if-chains: a registered name is buildable)."""

from __future__ import annotations

import torch
from torch import nn

from innerloop import registry
from innerloop.algorithms import MetaAlgorithm, without_norm
from innerloop.algorithms.select import select_adapted
from innerloop.data import TaskFamily
from innerloop.errors import UserError
from innerloop.experiments import components  # noqa: F401  (registers the built-in task families and models)
from innerloop.experiments.config import Config, ConfigError
from innerloop.geometry import build_geometry
from innerloop.geometry.blocks import model_layers
from innerloop.rules import BuildContext, build_rule


def build_family(cfg: Config) -> TaskFamily:
    """The task family ``task.name`` names (a registered ``"task"``)."""
    try:
        return registry.lookup("task", cfg.task.name).build(cfg.task)
    except UserError:  # already a message for the user (e.g. a dataset's)
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_model(cfg: Config, family: TaskFamily) -> nn.Module:
    """The model ``model.name`` names (a registered ``"model"``), for ``family``'s inputs and outputs."""
    try:
        return registry.lookup("model", cfg.model.name).build(cfg.model, family)
    except UserError:
        raise
    except ValueError as e:
        raise ConfigError(f"{e} (task {cfg.task.name!r})") from None


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """The torch device ``name`` names (``auto``: CUDA when available, else the CPU), or one ConfigError
    (``what`` names the setting in it) for a bad name or a CUDA device on a machine without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{what}: not a device name: {name!r} (cpu, cuda, cuda:N, auto, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} is {name!r} but CUDA is not available on this machine (use cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{what} is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def build(cfg: Config, family: TaskFamily | None = None) -> tuple[TaskFamily, MetaAlgorithm]:
    """Build the task family and the meta-algorithm (model, rule, geometry) on ``train.device``.

    The model's initial weights come from ``train.seed``.
    """
    family = family or build_family(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, family)
    a = cfg.algorithm
    algo_cls = registry.lookup("algorithm", a.name)
    head = {"head": a.head} if a.head is not None else {}
    try:
        if head and a.name != "anil":
            raise ValueError(f"algorithm.head names ANIL's adapted head; algorithm {a.name!r} does not take it")
        names = algo_cls.adapted_names(model, **head)
        if not a.adapt_norm:
            names = without_norm(model, names)
        names = select_adapted(model, names, a.adapt_only, a.freeze)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    params = dict(model.named_parameters())
    steps = max(a.inner_steps, a.eval_inner_steps or a.inner_steps)
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    ctx = BuildContext({n: params[n].shape for n in names}, steps, dtype, learned_init=algo_cls.learns_init,
                       layers=tuple(map(tuple, model_layers(model))))
    rule = build_rule(cfg.rule, ctx)
    geometry = build_geometry(cfg.geometry, ctx)
    try:
        algo = algo_cls(
            model,
            rule,
            loss_fn=family.loss,
            metric_fn=family.metric,
            inner_steps=a.inner_steps,
            eval_inner_steps=a.eval_inner_steps,
            first_order=a.first_order,
            geometry=geometry,
            adapted=names,
            second_order_steps=a.second_order_steps,
            checkpoint=a.checkpoint,
            norm_stats=a.norm_stats,
            vmap_chunk=cfg.train.vmap_chunk,
            **head,
        )
    except ValueError as e:  # e.g. checkpointing with a rule that cannot run under it
        raise ConfigError(f"config error: {e}") from None
    return family, algo.to(device=resolve_device(cfg.train.device), dtype=dtype)


def choose_path(algo: MetaAlgorithm, setting: str, device: torch.device) -> str:
    """``loop``, ``threads`` or ``vmap``. ``auto`` follows the measurements in docs/performance.md:
    on a CPU, vmap wins for small fully connected models (sine MLP: ~5 ms vs ~30 ms per meta-batch
    of 25); for convolutional models vmap is slower at several times the memory, and ``threads``
    beats the plain loop by 1.1–1.5× (4-CONV-64, 1- and 5-shot, first and second order, 2 threads)
    at 1.4–2× its memory, so ``threads`` when torch has more than one thread, else ``loop``; on
    accelerators batching the tasks usually pays, so vmap. Activation checkpointing needs autograd,
    so it gets the loop instead of vmap."""
    if setting != "auto":
        return setting
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in algo.model.modules())
    if device.type == "cpu" and has_conv:
        return "threads" if torch.get_num_threads() > 1 else "loop"
    if algo.checkpoint:
        return "loop"
    return "vmap"
