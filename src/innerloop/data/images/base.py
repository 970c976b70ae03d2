"""Image datasets for few-shot episodes: one split = a list of classes, each with its images.

A loader (one module per dataset, registered in :data:`DATASETS`) reads a dataset's standard
on-disk layout under a user-given root and returns a :class:`SplitData` per split. Small datasets
are held as ``uint8`` tensors in memory (:class:`TensorSplit`); large ones decode images lazily
from files (:class:`FileSplit`). Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from innerloop import registry
from innerloop.errors import UserError


class DatasetError(UserError):
    """A dataset that is missing, malformed, or cannot serve the requested episodes."""


class SplitData:
    """One split of a dataset. Images come out as ``uint8`` tensors ``[n, C, H, W]`` of one size."""

    dataset: str
    split: str
    classes: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)

    def count(self, c: int) -> int:
        """Number of images of class index ``c``."""
        raise NotImplementedError

    def images(self, c: int, idx: Sequence[int]) -> Tensor:
        """Images ``idx`` of class ``c`` as ``uint8 [len(idx), C, H, W]``."""
        raise NotImplementedError


@dataclass
class TensorSplit(SplitData):
    """All images in memory: ``data[c]`` is ``uint8 [n_c, C, H, W]``."""

    dataset: str
    split: str
    classes: list[str]
    data: list[Tensor]
    image_shape: tuple[int, int, int] = field(init=False)

    def __post_init__(self):
        if len(self.classes) != len(self.data):
            raise ValueError("one tensor per class")
        if not self.data:
            raise DatasetError(f"{self.dataset} {self.split}: no classes")
        self.image_shape = tuple(self.data[0].shape[1:])
        for name, t in zip(self.classes, self.data, strict=True):
            if t.dtype != torch.uint8 or tuple(t.shape[1:]) != self.image_shape:
                raise ValueError(f"{self.dataset} class {name}: expected uint8 {self.image_shape}, got "
                                 f"{t.dtype} {tuple(t.shape[1:])}")

    def count(self, c: int) -> int:
        return int(self.data[c].shape[0])

    def images(self, c: int, idx: Sequence[int]) -> Tensor:
        return self.data[c][torch.as_tensor(list(idx), dtype=torch.long)]


@dataclass
class FileSplit(SplitData):
    """Images decoded on demand: ``files[c]`` lists class ``c``'s image files and ``decode(path)``
    returns ``uint8 [C, H, W]`` at the dataset's size (it names the file in its error)."""

    dataset: str
    split: str
    classes: list[str]
    files: list[list[Path]]
    decode: Callable[[Path], Tensor]
    image_shape: tuple[int, int, int] = (3, 84, 84)

    def count(self, c: int) -> int:
        return len(self.files[c])

    def images(self, c: int, idx: Sequence[int]) -> Tensor:
        return torch.stack([self.decode(self.files[c][i]) for i in idx])


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: ``load(root, split, **options) -> SplitData``; ``layouts`` describes the
    accepted on-disk layouts (printed when the data is missing)."""

    name: str
    load: Callable[..., SplitData]
    layouts: str
    splits: tuple[str, ...] = ("train", "val", "test")
    rotate: bool = False  # default of the per-task class rotation (Omniglot: True)


#: every registered dataset: the "dataset" table of :mod:`innerloop.registry`
DATASETS: dict[str, DatasetSpec] = registry.table("dataset")


def register_dataset(name: str, layouts: str, splits: tuple[str, ...] = ("train", "val", "test"),
                     rotate: bool = False):
    """Decorator: register ``load(root, split, **options) -> SplitData`` under ``name``."""

    def deco(load):
        registry.register("dataset", name)(DatasetSpec(name, load, layouts, splits, rotate))
        return load

    return deco


def load_split(name: str, root: str | Path | None, split: str, **options) -> SplitData:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    valid = loader_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetError(f"dataset {name!r} has no option {', '.join(unknown)} (its options: "
                           f"{', '.join(valid) or 'none'})")
    return DATASETS[name].load(root, split, **options)


def loader_options(name: str) -> list[str]:
    """The keyword options of a dataset's loader (e.g. omniglot's ``split_rule``)."""
    sig = inspect.signature(DATASETS[name].load)
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
