"""Turn a validated :class:`Config` into objects: task family, model, rule, meta-algorithm."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from innerloop.algorithms import ALGORITHMS, MetaAlgorithm, without_norm
from innerloop.algorithms.select import select_adapted
from innerloop.data import LinearBinary, Sine, TaskFamily
from innerloop.data.episodes import FewShotImages
from innerloop.data.images.base import SplitData
from innerloop.experiments.config import Config, ConfigError
from innerloop.geometry import build_geometry
from innerloop.geometry.blocks import model_layers
from innerloop.models import MLP, Conv4, LinNet, LogisticRegression, ResNet12
from innerloop.rules import BuildContext, build_rule


def build_family(cfg: Config) -> TaskFamily:
    t = cfg.task
    if t.name == "sine":
        return Sine(t.k_shot, t.query, t.form)
    if t.name == "linear":
        return LinearBinary(t.dim, t.support, t.query, t.subspace, t.subspace_seed, t.balanced)
    if t.name == "images":
        return build_images(t)
    raise ConfigError(f"unknown task family {t.name!r}")


class _LazySplits(Mapping):
    """Load a split the first time it is asked for (evaluation never reads the training split)."""

    def __init__(self, loaders: dict[str, Callable[[], SplitData]]):
        self.loaders, self.cache = loaders, {}

    def __getitem__(self, split: str) -> SplitData:
        if split not in self.cache:
            self.cache[split] = self.loaders[split]()
        return self.cache[split]

    def __iter__(self):
        return iter(self.loaders)

    def __len__(self) -> int:
        return len(self.loaders)


def build_images(t) -> FewShotImages:
    from innerloop.data.images import DATASETS, load_split

    for name in (t.dataset, t.test_dataset):
        if name is not None and name not in DATASETS:
            raise ConfigError(f"task.dataset: unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    if t.test_split_file and not t.test_dataset:
        raise ConfigError("task.test_split_file is the cross-domain test dataset's split file; without "
                          "task.test_dataset use task.split_file")
    opts = {**t.options, **({"split_file": t.split_file} if t.split_file else {})}
    test_name, test_root = (t.test_dataset, t.test_root) if t.test_dataset else (t.dataset, t.root)
    # cross-domain: the test dataset's own split file (its options are its own, not the training set's)
    test_opts = ({"split_file": t.test_split_file} if t.test_split_file else {}) if t.test_dataset else opts
    loaders = {
        "train": lambda: load_split(t.dataset, t.root, "train", **opts),
        "val": lambda: load_split(test_name, test_root, "val", **test_opts),
        "test": lambda: load_split(test_name, test_root, "test", **test_opts),
    }
    rotate = DATASETS[t.dataset].rotate if t.rotate is None else t.rotate
    return FewShotImages(_LazySplits(loaders), t.n_way, t.k_shot, t.query, rotate=rotate)


def build_model(cfg: Config, family: TaskFamily) -> nn.Module:
    m = cfg.model
    if m.name in ("conv4", "resnet12"):
        if len(family.input_shape) != 3:
            raise ConfigError(f"model {m.name} needs image tasks (C, H, W inputs); task {cfg.task.name!r} gives "
                              f"inputs of shape {family.input_shape}")
        if m.name == "resnet12":
            return ResNet12(tuple(family.input_shape), family.output_dim, m.widths, m.norm)
        return Conv4(tuple(family.input_shape), family.output_dim, m.channels, m.depth, m.norm, m.pool, m.readout)
    if len(family.input_shape) != 1:
        raise ConfigError(f"model {m.name!r} takes vectors; task {cfg.task.name!r} gives inputs of shape "
                          f"{family.input_shape} (use model.name = \"conv4\")")
    (in_dim,) = family.input_shape
    if m.name == "mlp":
        return MLP(in_dim, m.hidden, family.output_dim)
    if m.name == "logreg":
        return LogisticRegression(in_dim, family.output_dim)
    if m.name == "linnet":
        return LinNet(in_dim, family.output_dim, m.hidden, m.layers)
    raise ConfigError(f"unknown model {m.name!r}")


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: not a device name: {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available on this machine")
    return dev


def build(cfg: Config, family: TaskFamily | None = None) -> tuple[TaskFamily, MetaAlgorithm]:
    """Build the task family and the meta-algorithm (model, rule, geometry) on ``train.device``.

    The model's initial weights come from ``train.seed``.
    """
    family = family or build_family(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, family)
    a = cfg.algorithm
    algo_cls = ALGORITHMS[a.name]
    try:
        names = algo_cls.adapted_names(model)
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
            vmap_chunk=cfg.train.vmap_chunk,
        )
    except ValueError as e:  # e.g. checkpointing with a rule that cannot run under it
        raise ConfigError(f"config error: {e}") from None
    return family, algo.to(device=resolve_device(cfg.train.device), dtype=dtype)


def choose_path(algo: MetaAlgorithm, setting: str, device: torch.device) -> str:
    """``loop``, ``threads`` or ``vmap``. ``auto`` follows the measurements in docs/performance.md:
    on a CPU, vmap wins for small fully connected models (sine MLP: ~5 ms vs ~30 ms per meta-batch
    of 25); for convolutional models vmap is slower at several times the memory, and ``threads``
    beats the plain loop by 1.1–1.35× (4-CONV-64, 1- and 5-shot, first and second order, 2 threads)
    at ~1.4× its memory, so ``threads`` when torch has more than one thread, else ``loop``; on
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
