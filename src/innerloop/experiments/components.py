"""Task families and models a config can name: each one a config class and a builder, registered
in :mod:`innerloop.registry` (kinds ``"task"`` and ``"model"``) like rules, geometries, algorithms,
datasets and executors.

A user's model or task family registers the same way, after ``innerloop`` is imported; the config
then accepts its name (the config rebuilds its sections from the registry)::

    class MyNetConfig(Strict):
        name: Literal["mynet"] = "mynet"
        width: PositiveInt = 32

    @register_model("mynet", MyNetConfig)
    def build_mynet(cfg: MyNetConfig, family: TaskFamily) -> nn.Module:
        return MyNet(family.input_shape, family.output_dim, cfg.width)

A builder raises ``ValueError`` for a config it cannot build; the message reaches the user as a
config error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from innerloop import registry
from innerloop.data import LinearBinary, Sine, TaskFamily
from innerloop.data.episodes import FewShotImages
from innerloop.data.images import DATASETS, load_split
from innerloop.data.images.base import SplitData
from innerloop.models import MLP, Conv4, LinNet, LogisticRegression, ResNet12


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ComponentSpec:
    """A registered task family or model: its config class and ``build(cfg, ...)``."""

    name: str
    config: type[BaseModel]
    build: Callable[..., Any]


def register_task(name: str, config: type[BaseModel]):
    """Decorator: register ``build(cfg) -> TaskFamily`` as task family ``name``."""

    def deco(build):
        registry.register("task", name)(ComponentSpec(name, config, build))
        return build

    return deco


def register_model(name: str, config: type[BaseModel]):
    """Decorator: register ``build(cfg, family) -> nn.Module`` as model ``name``."""

    def deco(build):
        registry.register("model", name)(ComponentSpec(name, config, build))
        return build

    return deco


# ---- task families -----------------------------------------------------------------------------
class SineConfig(Strict):
    name: Literal["sine"] = "sine"
    k_shot: PositiveInt = 5
    query: PositiveInt = 100
    form: Literal["alfa", "maml"] = "alfa"


class LinearConfig(Strict):
    name: Literal["linear"] = "linear"
    dim: PositiveInt = 100
    support: PositiveInt = 500  # KFO: 1,000 points per task, split not stated: 500 / 500
    query: PositiveInt = 500
    balanced: bool = True  # half the support and query points per label
    subspace: PositiveInt | None = None  # our variant: w in a fixed random r-dim subspace
    subspace_seed: int = 0


class ImagesConfig(Strict):
    """N-way K-shot episodes from an image dataset read from ``root`` (never downloaded)."""

    name: Literal["images"] = "images"
    dataset: str = "glyphs"
    root: str | None = None  # where the dataset lies (not needed for the embedded glyphs)
    split_file: str | None = None  # class names per split, overriding the built-in split
    test_dataset: str | None = None  # cross-domain: validate and test on another dataset
    test_root: str | None = None
    test_split_file: str | None = None  # class names per split of the test dataset (cross-domain)
    n_way: PositiveInt = 5
    k_shot: PositiveInt = 1
    query: PositiveInt = 15  # query images per class
    rotate: bool | None = None  # one random 0/90/180/270° turn per class per task (None: dataset default)
    # loader options of the training dataset, e.g. {split_rule = "vinyals"} for omniglot
    options: dict[str, str | int | float | bool] = {}


@register_task("sine", SineConfig)
def build_sine(t: SineConfig) -> TaskFamily:
    return Sine(t.k_shot, t.query, t.form)


@register_task("linear", LinearConfig)
def build_linear(t: LinearConfig) -> TaskFamily:
    return LinearBinary(t.dim, t.support, t.query, t.subspace, t.subspace_seed, t.balanced)


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


@register_task("images", ImagesConfig)
def build_images(t: ImagesConfig) -> FewShotImages:
    for name in (t.dataset, t.test_dataset):
        if name is not None and name not in DATASETS:
            raise ValueError(f"task.dataset: unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    if t.test_split_file and not t.test_dataset:
        raise ValueError("task.test_split_file is the cross-domain test dataset's split file; without "
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


# ---- models ------------------------------------------------------------------------------------
class MLPConfig(Strict):
    name: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = [40, 40]


class LogRegConfig(Strict):
    name: Literal["logreg"] = "logreg"


class LinNetConfig(Strict):
    name: Literal["linnet"] = "linnet"
    hidden: PositiveInt | list[PositiveInt] = 64  # one width for every layer, or each layer's width
    layers: PositiveInt = 3  # used when hidden is one width


class Conv4Config(Strict):
    """The 4-CONV backbone: ``depth`` blocks of 3×3 conv, norm, ReLU, 2×2 max-pool; a linear head."""

    name: Literal["conv4"] = "conv4"
    channels: PositiveInt = 64
    depth: PositiveInt = 4
    norm: Literal["batch", "group"] = "batch"
    pool: Literal["max", "stride", "none"] = "max"  # stride: MAML's Omniglot net; none: KFO's CIFAR-FS net
    readout: Literal["flatten", "mean"] = "flatten"  # mean: spatial mean, head independent of input size


class ResNet12Config(Strict):
    name: Literal["resnet12"] = "resnet12"
    widths: list[PositiveInt] = [64, 128, 256, 512]
    norm: Literal["batch", "group"] = "batch"


def image_shape(name: str, family: TaskFamily) -> tuple[int, int, int]:
    if len(family.input_shape) != 3:
        raise ValueError(f"model {name} needs image tasks (C, H, W inputs); the task family gives inputs of shape "
                         f"{family.input_shape}")
    return tuple(family.input_shape)


def vector_size(name: str, family: TaskFamily) -> int:
    """The input size of a model that takes vectors (an image's pixels when it flattens images)."""
    return math.prod(family.input_shape)


def flattens(family: TaskFamily) -> bool:
    """Whether a model that takes vectors must flatten this family's inputs (images) first."""
    return len(family.input_shape) != 1


@register_model("conv4", Conv4Config)
def build_conv4(m: Conv4Config, family: TaskFamily) -> nn.Module:
    return Conv4(image_shape(m.name, family), family.output_dim, m.channels, m.depth, m.norm, m.pool, m.readout)


@register_model("resnet12", ResNet12Config)
def build_resnet12(m: ResNet12Config, family: TaskFamily) -> nn.Module:
    return ResNet12(image_shape(m.name, family), family.output_dim, m.widths, m.norm)


@register_model("mlp", MLPConfig)
def build_mlp(m: MLPConfig, family: TaskFamily) -> nn.Module:
    size, flatten = vector_size(m.name, family), flattens(family)
    return MLP(size, m.hidden, family.output_dim, flatten)


@register_model("logreg", LogRegConfig)
def build_logreg(m: LogRegConfig, family: TaskFamily) -> nn.Module:
    size, flatten = vector_size(m.name, family), flattens(family)
    return LogisticRegression(size, family.output_dim, flatten)


@register_model("linnet", LinNetConfig)
def build_linnet(m: LinNetConfig, family: TaskFamily) -> nn.Module:
    size, flatten = vector_size(m.name, family), flattens(family)
    return LinNet(size, family.output_dim, m.hidden, m.layers, flatten)
