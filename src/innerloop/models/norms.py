"""Norm layers and model state: which buffers are running statistics, which torch norm modules are
unsafe under second-order vmap, and :func:`exact_norms` to make them safe.

torch 2.13's native norm kernels (``batch_norm``, ``layer_norm``, ``group_norm``) give wrong
second-order gradients through their affine weight and bias under ``torch.func`` transforms
(pytorch/functorch#534; against central finite differences the relative error is ~1e-2 for
BatchNorm2d and ~1e-3 for LayerNorm), while the same kernels without the affine part are exact.
The vmap executor therefore refuses a second-order meta-gradient through such a module and names
it; :func:`exact_norms` switches the module to a subclass that applies the affine part outside the
kernel (same parameters, buffers and state dict), which is exact everywhere.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.models.conv import BatchNorm2d, GroupNorm

_NATIVE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_OWN = (BatchNorm2d, GroupNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (ours or torch's)."""
    return isinstance(module, (*_OWN, *_NATIVE)) or getattr(module, "exact_affine", False)


def running_stat_buffers(model: nn.Module) -> set[str]:
    """Names (as in ``named_buffers()``) of the running statistics of torch's BatchNorm / InstanceNorm."""
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(m, b, None) is not None:
                    out.add(f"{name}.{b}" if name else b)
    return out


def native_norms(module: nn.Module, prefix: str = "") -> list[str]:
    """``"name (Class)"`` of every torch norm module with an affine part inside ``module`` that
    :func:`exact_norms` has not made exact."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, _NATIVE) and not getattr(m, "exact_affine", False) and getattr(m, "weight", None) is not None:
            full = ".".join(p for p in (prefix, name) if p)
            out.append(f"{full or '<model>'} ({type(m).__name__})")
    return out


def _channel_affine(y: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    shape = (-1,) + (1,) * (y.dim() - 2)  # channels on dim 1
    if w is not None:
        y = y * w.reshape(shape)
    return y + b.reshape(shape) if b is not None else y


class _ExactBatchNorm:
    """torch's ``_BatchNorm.forward`` with the affine part outside the kernel."""

    exact_affine = True

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        y = F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None, None, None,
                         bn_training, momentum, self.eps)
        return _channel_affine(y, self.weight, self.bias)


class _ExactLayerNorm:
    exact_affine = True

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class _ExactGroupNorm:
    exact_affine = True

    def forward(self, x: Tensor) -> Tensor:
        return _channel_affine(F.group_norm(x, self.num_groups, None, None, self.eps), self.weight, self.bias)


_EXACT: dict[type, type] = {}


def _exact_class(cls: type) -> type | None:
    if cls not in _EXACT:
        if issubclass(cls, nn.modules.batchnorm._BatchNorm):
            mixin = _ExactBatchNorm
        elif issubclass(cls, nn.LayerNorm):
            mixin = _ExactLayerNorm
        elif issubclass(cls, nn.GroupNorm):
            mixin = _ExactGroupNorm
        else:
            return None
        _EXACT[cls] = type(f"Exact{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _EXACT[cls]


def exact_norms(model: nn.Module) -> nn.Module:
    """Switch, in place, every torch BatchNorm / LayerNorm / GroupNorm of ``model`` to a subclass that
    applies the affine part outside the kernel (exact second order under vmap); return ``model``.

    Parameters, buffers and the state dict are unchanged. Raises for a native norm it cannot
    convert (InstanceNorm with an affine part)."""
    for name, m in model.named_modules():
        if isinstance(m, _NATIVE) and not getattr(m, "exact_affine", False):
            cls = _exact_class(type(m))
            if cls is None:
                if getattr(m, "weight", None) is None:
                    continue
                raise ValueError(f"exact_norms: cannot convert {name or '<model>'} ({type(m).__name__})")
            m.__class__ = cls
    return model
