"""Which parameter tensors form one *layer* of a model: the blocks of MetaMiDA's blockIAF.

MetaMiDA (§4) forms block ``i`` from "the weight indices of the i-th CNN layer", a layer being a
3×3 conv with its BatchNorm, ReLU and max-pool; the released code groups conv W, b and BN γ, β of
each layer into one block, so a 4-CONV with a linear head has 5 blocks. The model, not the
parameter names, says what a layer is: walking the modules in registration order, a module with
parameters of its own starts a new layer, except a normalisation module, which joins the layer
before it (a conv and the norm after it are one layer, whatever their names).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's, or any module whose class name ends in "Norm" / "Norm1d/2d/3d"
    (our vmap-safe :class:`~innerloop.models.conv.BatchNorm2d` and ``GroupNorm``, a user's own)."""
    name = type(module).__name__
    return isinstance(module, _NORMS) or name.endswith("Norm") or name.rstrip("123d").endswith("Norm")


def model_layers(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by layer, in module registration order (see the module docstring)."""
    layers: list[list[str]] = []
    for prefix, module in model.named_modules():
        own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if is_norm(module) and layers:
            layers[-1] += own
        else:
            layers.append(own)
    return layers


def prefix_blocks(names: Sequence[str]) -> list[list[str]]:
    """Names grouped by module prefix (the part before the last "."), in order of first appearance:
    the blocks when only the names are known (no model)."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(n.rpartition(".")[0], []).append(n)
    return list(blocks.values())


def adapted_blocks(names: Sequence[str], layers: Iterable[Sequence[str]] | None) -> list[list[str]]:
    """The blocks of the adapted tensors ``names``: each layer's adapted tensors (layers with none are
    left out). Without ``layers``, by module prefix. Every name is in exactly one block."""
    if layers is None:
        return prefix_blocks(names)
    wanted = set(names)
    blocks = [[n for n in layer if n in wanted] for layer in layers]
    blocks = [b for b in blocks if b]
    covered = {n for b in blocks for n in b}
    missing = [n for n in names if n not in covered]
    if missing:
        raise ValueError(f"adapted tensors {missing} are not parameters of the model's layers")
    return blocks
