"""Convolutional backbones, vmap-safe.

BatchNorm always uses the batch statistics of the current forward (transductive, as in MAML) and
keeps no running buffers, so nothing is mutated inside ``vmap``. Inside ``torch.func`` transforms
the affine part is applied *outside* the batch-norm kernel: under ``vmap`` in torch 2.13 the
second-order gradient through the native kernel's affine weight and bias is wrong (see
docs/architecture.md), while this form is exact. With plain autograd the fused kernel is exact
and cheaper, so it is used there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop._torch_private import functorch_wrapped as _functorch_wrapped


class _MaxPool2(torch.autograd.Function):
    """2×2 max-pooling whose forward runs the channels-last CPU kernel (several times faster than the
    NCHW one in torch 2.13) and whose backward is the usual NCHW one (differentiable, so second
    order works). Pooling only moves values: outputs and gradients are those of ``F.max_pool2d``."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        y, idx = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), 2)
        return y.contiguous(), idx.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_idx: Tensor) -> Tensor:
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)


def max_pool2(x: Tensor) -> Tensor:
    """2×2 max-pooling; on the CPU outside ``torch.func`` transforms via :class:`_MaxPool2`."""
    if x.device.type == "cpu" and x.dim() == 4 and not _functorch_wrapped(x):
        return _MaxPool2.apply(x)[0]
    return F.max_pool2d(x, 2)


class BatchNorm2d(nn.Module):
    """Batch-statistics batch norm with a learnable per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if not _functorch_wrapped(x, self.weight, self.bias):
            # plain autograd (the loop path): the native kernel's fused affine is exact and cheaper
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
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


def make_norm(channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return BatchNorm2d(channels)
    if norm == "group":
        return GroupNorm(channels)
    raise ValueError(f"unknown norm {norm!r}; expected 'batch' or 'group'")


class ConvBlock(nn.Module):
    """3×3 conv → norm → ReLU → downsampling.

    ``pool``: ``"max"`` (2×2 max-pool, the usual 4-CONV), ``"stride"`` (the conv has stride 2 and
    there is no pooling: MAML's Omniglot network), ``"none"`` (no downsampling: KFO's CIFAR-FS
    network, followed by a spatial mean).
    """

    def __init__(self, cin: int, cout: int, norm: str = "batch", pool: str = "max"):
        super().__init__()
        if pool not in ("max", "stride", "none"):
            raise ValueError(f"unknown pool {pool!r}; expected 'max', 'stride' or 'none'")
        self.pool = pool
        self.conv = nn.Conv2d(cin, cout, 3, stride=2 if pool == "stride" else 1, padding=1)
        self.norm = make_norm(cout, norm)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        if self.pool == "max":
            # max-pooling commutes with the ReLU (both are monotone), values and gradients alike
            # (up to ties, which the ReLU zeroes anyway); pooling first gives the ReLU 4× fewer elements
            x = max_pool2(x)
        return F.relu(x)


class SpatialMean(nn.Module):
    """``[B, C, H, W] → [B, C]``: makes the head independent of the input size."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


class Conv4(nn.Module):
    """The 4-CONV few-shot backbone (``depth`` blocks of ``channels`` filters; ``depth`` 1–3 is the
    KFO paper's SCNN) and a linear head.

    ``readout``: ``"flatten"`` (head input size inferred from ``in_shape`` (C, H, W)) or ``"mean"``
    (spatial mean: the head sees ``channels`` features whatever the input size). ``pool`` as in
    :class:`ConvBlock`.
    """

    #: forward(x) is head(body(x)): ANIL computes the body features once per task
    feature_split = ("body", "head")

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_dim: int,
        channels: int = 64,
        depth: int = 4,
        norm: str = "batch",
        pool: str = "max",
        readout: str = "flatten",
    ):
        super().__init__()
        blocks = []
        c = in_shape[0]
        for _ in range(depth):
            blocks.append(ConvBlock(c, channels, norm, pool))
            c = channels
        if readout not in ("flatten", "mean"):
            raise ValueError(f"unknown readout {readout!r}; expected 'flatten' or 'mean'")
        self.body = nn.Sequential(*blocks, nn.Flatten() if readout == "flatten" else SpatialMean())
        with torch.no_grad():
            feat = self.body(torch.zeros(2, *in_shape)).shape[-1]
        self.head = nn.Linear(feat, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
