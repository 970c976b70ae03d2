"""Convolutional backbones, vmap-safe.

BatchNorm always uses the batch statistics of the current forward (transductive, as in MAML) and
keeps no running buffers, so nothing is mutated inside ``vmap``. The affine part is applied
*outside* the batch-norm kernel: under ``vmap`` in torch 2.13 the second-order gradient through
the native kernel's affine weight and bias is wrong (see docs/architecture.md), while this form
is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BatchNorm2d(nn.Module):
    """Batch-statistics batch norm with a learnable per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(x, None, None, None, None, training=True, eps=self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class GroupNorm(nn.Module):
    """Group norm with the affine part outside the kernel (same reason as :class:`BatchNorm2d`).
    Uses ``gcd(groups, channels)`` groups so any channel count works."""

    def __init__(self, channels: int, groups: int = 8, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = math.gcd(groups, channels), eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.group_norm(x, self.groups, None, None, self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvBlock(nn.Module):
    """3×3 conv → norm → ReLU → 2×2 max-pool."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = BatchNorm2d(cout) if norm == "batch" else GroupNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class Conv4(nn.Module):
    """The 4-CONV few-shot backbone (``depth`` blocks of ``channels`` filters) and a linear head.

    The head's input size is inferred from ``in_shape`` (C, H, W).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_dim: int,
        channels: int = 64,
        depth: int = 4,
        norm: str = "batch",
    ):
        super().__init__()
        blocks = []
        c = in_shape[0]
        for _ in range(depth):
            blocks.append(ConvBlock(c, channels, norm))
            c = channels
        self.body = nn.Sequential(*blocks, nn.Flatten())
        with torch.no_grad():
            feat = self.body(torch.zeros(2, *in_shape)).shape[-1]
        self.head = nn.Linear(feat, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
