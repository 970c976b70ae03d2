"""Kronecker-factored views of a parameter tensor's gradient, shared by Meta-Curvature and KFO.

Two views of one tensor ``g``:

* the **matrix view** (KFO): a batch of ``n × m`` matrices, ``g.reshape(-1, n, m)``, on which a
  pair of factors acts as ``L G R`` (``L`` is ``n × n``, ``R`` is ``m × m``). Shapes:

  ========================  ===========================  ==========================
  tensor                    ``(n, m)``                   batch
  ========================  ===========================  ==========================
  0-D scalar                ``(1, 1)``                   1
  1-D ``(d,)`` (bias, norm) ``(d, 1)``                   1
  linear ``(out, in)``      ``(out, in)``                1
  conv ``(out, C, kh, kw)`` ``(C, kh·kw)``               ``out`` (one pair shared by all filters)
  ========================  ===========================  ==========================

  Row-major ``vec``: ``vec(L G R) = (L ⊗ Rᵀ) vec(G)`` (tested against ``torch.kron``).

* the **mode view** (Meta-Curvature): linear ``(out, in)`` keeps its two modes, conv
  ``(out, C, kh, kw)`` becomes the 3-mode tensor ``(out, C, kh·kw)``; 0-D and 1-D tensors have no
  Kronecker structure and are scaled elementwise. Any tensor with 3 or more dimensions is treated
  like a conv weight (first dim = output, second = input channels, the rest flattened).

Everything here is shape arithmetic plus ``matmul`` / ``tensordot``: vmap-safe, no in-place ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def matrix_dims(shape: Sequence[int]) -> tuple[int, int]:
    """``(n, m)`` of the KFO matrix view of a tensor of this shape (see the module docstring)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], 1
    if len(shape) == 2:
        return shape[0], shape[1]
    return shape[1], math.prod(shape[2:])


def as_matrices(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t`` (of shape ``shape``) as a batch of matrices ``[-1, n, m]``."""
    n, m = matrix_dims(shape)
    return t.reshape(-1, n, m)


def mode_dims(shape: Sequence[int]) -> tuple[int, ...] | None:
    """Mode sizes of the Meta-Curvature view: ``(out, in)``, ``(out, C, kh·kw)``, or ``None``
    for tensors that are preconditioned elementwise (0-D and 1-D)."""
    shape = tuple(shape)
    if len(shape) <= 1:
        return None
    if len(shape) == 2:
        return shape
    return shape[0], shape[1], math.prod(shape[2:])


def mode_product(x: Tensor, mat: Tensor, mode: int) -> Tensor:
    """Tensor-times-matrix along ``mode``: ``y[..., i, ...] = Σ_j mat[i, j] x[..., j, ...]``.

    ``mat`` is ``[p, x.shape[mode]]``; the result has ``p`` in place of ``x.shape[mode]``."""
    return torch.movedim(torch.tensordot(mat, x, dims=([1], [mode])), 0, mode)


def kron_sandwich(left: Tensor, g: Tensor, right: Tensor) -> Tensor:
    """``L G R`` for a batch of matrices ``g [b, n, m]`` (``L`` is ``n × n``, ``R`` is ``m × m``)."""
    return left @ g @ right


def gram(a: Tensor) -> Tensor:
    """``aᵀ a`` (positive semi-definite; the identity when ``a`` is)."""
    return a.mT @ a


def psd_sandwich(left: Tensor, g: Tensor, right: Tensor) -> Tensor:
    """``(LᵀL) G (RᵀR)`` for a batch ``g [b, n, m]``, in the cheaper of two orders per side.

    Forming ``RᵀR`` costs ``m³``; applying ``R`` then ``Rᵀ`` costs ``2 b n m²``. For a linear head
    on images (``n`` = 5 classes, ``m`` = 784 pixels, ``b = 1``) the Gram matrix is ~100× the work,
    so it is formed only when ``m < b n`` (and ``LᵀL`` only when ``n < b m``). Leading dimensions
    before ``b`` are a stack of such problems (the factors then ``[G, 1, n, n]`` and ``[G, 1, m, m]``)."""
    b, n, m = g.shape[-3:]
    g = gram(left) @ g if n < b * m else left.mT @ (left @ g)
    return g @ gram(right) if m < b * n else (g @ right.mT) @ right
