"""N-way K-shot episodes from an image dataset split, as a task family.

Each task draws ``n_way`` classes without replacement, relabels them ``0..n_way-1`` in a random
order, and draws ``k_shot + query`` distinct images per class (support and query are disjoint).
With ``rotate`` (Omniglot), each drawn class gets one random rotation of 0/90/180/270° for the
whole task. Everything is drawn from the generator passed to :meth:`sample`, so tasks are
deterministic from a seed. Images are scaled to ``[0, 1]`` floats (``invert`` gives ``1 − x``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop.data.images.base import DatasetError, SplitData
from innerloop.data.synthetic import PointSource, TaskFamily
from innerloop.types import Task


class FewShotImages(TaskFamily):
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        splits: dict[str, SplitData],
        n_way: int,
        k_shot: int,
        query: int,
        *,
        rotate: bool = False,
        invert: bool = False,
        split: str = "train",
    ):
        self.splits, self.n_way, self.k_shot, self.query = splits, int(n_way), int(k_shot), int(query)
        self.rotate, self.invert, self.current = bool(rotate), bool(invert), split
        if split not in splits:
            raise DatasetError(f"no {split!r} split loaded (have {', '.join(splits)})")
        data = splits[split]
        self.data = data
        self.input_shape = data.image_shape
        self.output_dim = self.n_way
        self._check(data)

    def _check(self, data: SplitData) -> None:
        where = f"{data.dataset} {data.split} split"
        if len(data.classes) < self.n_way:
            raise DatasetError(f"{where} has {len(data.classes)} classes, fewer than n_way={self.n_way}")
        need = self.k_shot + self.query
        short = [(c, data.count(i)) for i, c in enumerate(data.classes) if data.count(i) < need]
        if short:
            shown = ", ".join(f"{c} ({n})" for c, n in short[:5]) + (" ..." if len(short) > 5 else "")
            raise DatasetError(f"{where}: {len(short)} classes have fewer than k_shot + query = {need} images: "
                               f"{shown}")

    def for_split(self, split: str) -> FewShotImages:
        return FewShotImages(self.splits, self.n_way, self.k_shot, self.query, rotate=self.rotate,
                             invert=self.invert, split=split)

    def sample(self, n: int, generator: torch.Generator) -> Task:
        return self.sample_with_source(n, generator)[0]

    def sample_with_source(self, n: int, generator: torch.Generator) -> tuple[Task, PointSource]:
        """The tasks of :meth:`sample` and a source of more images of each task's classes: for
        label ``j``, images of the class drawn for ``j`` that are in neither its support nor its
        query set, with the task's rotation of that class (see :meth:`_more_images`)."""
        drawn = [self._one(generator) for _ in range(n)]
        tasks = Task(*(torch.stack(parts) for parts in zip(*(d[0] for d in drawn), strict=True)))
        drawn_from = tuple(torch.stack(parts) for parts in zip(*(d[1] for d in drawn), strict=True))
        return tasks, PointSource(self._more_images, drawn_from)

    def _one(self, g: torch.Generator) -> tuple[Task, tuple[Tensor, Tensor, Tensor]]:
        """One task, and what it was drawn from: class indices ``[n_way]``, quarter turns
        ``[n_way]`` and the image indices used by support and query ``[n_way, k_shot + query]``."""
        data, k, q = self.data, self.k_shot, self.query
        classes = torch.randperm(len(data.classes), generator=g)[: self.n_way].tolist()
        sx, qx, used, turns_of = [], [], [], []
        for c in classes:
            idx = torch.randperm(data.count(c), generator=g)[: k + q].tolist()
            imgs = data.images(c, idx)
            turns = 0
            if self.rotate:
                turns = int(torch.randint(0, 4, (1,), generator=g))
                imgs = torch.rot90(imgs, turns, dims=(-2, -1))
            sx.append(imgs[:k])
            qx.append(imgs[k:])
            used.append(idx)
            turns_of.append(turns)
        labels = torch.arange(self.n_way)
        sy = labels.repeat_interleave(k)
        qy = labels.repeat_interleave(q)
        task = Task(self._float(torch.cat(sx)), sy, self._float(torch.cat(qx)), qy)
        return task, (torch.tensor(classes), torch.tensor(turns_of), torch.tensor(used))

    def spare_per_class(self) -> int:
        """How many images every class of the split has beyond one task's support and query."""
        return min(self.data.count(c) for c in range(len(self.data.classes))) - self.k_shot - self.query

    def _more_images(self, drawn_from: tuple[Tensor, ...], num: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``num // n_way`` more images per class of each task (balanced, labels in class order),
        at most :meth:`spare_per_class`: the same number for every task, so tasks stack."""
        classes, turns, used = drawn_from
        per_class = min(num // self.n_way, self.spare_per_class())
        if per_class <= 0:
            return torch.empty(len(classes), 0, *self.input_shape), torch.empty(len(classes), 0, dtype=torch.long)
        xs = []
        for cls, trn, usd in zip(classes.tolist(), turns.tolist(), used, strict=True):
            imgs = []
            for c, t, u in zip(cls, trn, usd, strict=True):
                free = torch.ones(self.data.count(c), dtype=torch.bool)
                free[u] = False
                rest = free.nonzero().squeeze(1)
                pick = rest[torch.randperm(rest.numel(), generator=g)[:per_class]]
                im = self.data.images(c, pick.tolist())
                imgs.append(torch.rot90(im, t, dims=(-2, -1)) if t else im)
            xs.append(self._float(torch.cat(imgs)))
        y = torch.arange(self.n_way).repeat_interleave(per_class)
        return torch.stack(xs), y.expand(len(xs), -1).clone()

    def _float(self, x: Tensor) -> Tensor:
        x = x.float() / 255.0
        return 1.0 - x if self.invert else x

    @staticmethod
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    @staticmethod
    def metric(outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.argmax(-1) == targets).to(outputs.dtype).mean()
