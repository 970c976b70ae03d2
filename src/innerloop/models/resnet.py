"""ResNet-12 (the MetaOptNet / TADAM few-shot variant), vmap-safe.

Four residual blocks of widths ``64-128-256-512``; each block is three 3×3 conv → norm →
LeakyReLU(0.1) layers (no activation after the third norm), a 1×1 conv + norm shortcut, the sum,
LeakyReLU(0.1) and a 2×2 max-pool. The body ends with a spatial mean, so the head (a linear layer)
does not depend on the input size. DropBlock is not included. Norms use batch statistics with the
affine part outside the kernel (see :mod:`innerloop.models.conv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.models.conv import SpatialMean, make_norm


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = make_norm(cout, norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = make_norm(cout, norm)
        self.conv3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm3 = make_norm(cout, norm)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm_sc = make_norm(cout, norm)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), 0.1)
        h = F.leaky_relu(self.norm2(self.conv2(h)), 0.1)
        h = self.norm3(self.conv3(h))
        h = F.leaky_relu(h + self.norm_sc(self.shortcut(x)), 0.1)
        return F.max_pool2d(h, 2)


class ResNet12(nn.Module):
    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(self, in_shape: tuple[int, int, int], out_dim: int, widths: Sequence[int] = (64, 128, 256, 512),
                 norm: str = "batch"):
        super().__init__()
        blocks, c = [], in_shape[0]
        for w in widths:
            blocks.append(ResBlock(c, w, norm))
            c = w
        self.body = nn.Sequential(*blocks, SpatialMean())
        self.head = nn.Linear(c, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
