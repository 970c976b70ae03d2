"""MetaMiDA (Zhang et al.): mirror descent with a meta-learned inverse mirror map.

The inner loop runs in a dual space. The model's parameters are the dual initialisation ``z0``
(so every algorithm meta-learns them unchanged); a task keeps a dual variable ``z`` and the
model sees ``φ = g(z)``, where ``g = (∇h)⁻¹`` is a learned invertible map::

    z ← z0;   repeat S times:  φ = g(z);  u = rule(∇φ L_support(φ));  z ← z + u;   finally φ = g(z)

With plain SGD, ``u = −α ∇φ L`` and this is mirror descent ``z ← z − α ∇φ L(g(z))``.

``g`` is a block-wise inverse autoregressive flow (blockIAF). The adapted tensors are grouped
into *blocks*, one per layer of the model (:mod:`innerloop.geometry.blocks`: a conv and the
BatchNorm after it are one layer, so a 4-CONV with its head has 5 blocks), in module order; the
classifier is the last block.

* Block 1 is elementwise: ``φ = z ⊙ σ(w) + b`` with ``w``, ``b`` shaped like the tensors.
* Block ``i > 1``: ``[a_i, μ_i] = d_i(c_i)`` with ``c_i = concat_{j<i} e_j(z_j)`` and
  ``φ_i = z_i ⊙ σ(a_i) + μ_i``, ``a_i`` and ``μ_i`` shaped like every tensor of block ``i``.

Since ``a_i`` and ``μ_i`` depend only on earlier blocks, the Jacobian of ``g`` is block lower
triangular with the positive diagonal ``σ(a)``: ``g`` is invertible. ``σ(a) = 2·sigmoid(a)`` by
default (bounded in (0, 2), ``= 1`` at ``a = 0``); ``scale="exp"`` gives ``exp(a)`` as in the
released code. ``g`` is *not* a gradient map in general (its Jacobian is not symmetric), so the
monotonicity ``(z − z')ᵀ(g(z) − g(z')) > 0`` that a mirror map has holds as long as the
off-diagonal part of the Jacobian (the dependence of ``a_i``, ``μ_i`` on earlier blocks, times
``z_i`` for ``a_i``) is small against ``min σ``; it can fail for large flow weights or large
``|z|`` (see ``tests/test_mirror.py``).

Encoders and decoders are small ReLU MLPs whose linear layers are *mode products* ("Kronecker
linear" layers): for a tensor ``X`` of shape ``(n_1, …, n_K)`` a layer computes
``X ×_1 W_1 ×_2 W_2 … ×_K W_K + B`` with one matrix ``W_k ∈ R^{m_k × n_k}`` per mode, i.e. the
dense matrix ``W_K ⊗ … ⊗ W_1`` at the cost of ``Σ m_k n_k`` numbers. With ``depth = D`` and
``h(n) = max(1, n // 2)`` (each mode halved per layer):

* ``e_j`` (one per tensor of every block but the last): ``s → h(s) → … → h^D(s)``, ReLU after
  each layer, flattened. A block's encoding is the concatenation of its tensors' encodings,
  and ``c_i`` concatenates the encodings of blocks ``1 … i−1`` (a flat vector).
* ``d_i``: a *mixing* layer (a mode product on the flat vector ``c_i``, i.e. a dense matrix: this
  is where encodings of different shapes meet) maps ``c_i`` to the concatenated bottlenecks
  ``h^D(s_t)`` of the block's tensors; ReLU; the result is split and each piece reshaped to its
  tensor's bottleneck shape. Each tensor then has a trunk ``h^D(s) → … → h(s)`` (``D − 1`` mode
  products, ReLU after each) and two heads ``h(s) → s``: one for ``a``, one for ``μ``.

Initialisation (``g`` is exactly the identity, and everything can learn):

* block 1: ``w = b = 0`` (``σ(0) = 1``);
* each head: its first mode factor and its bias are zero, the other factors random, so its
  output is exactly 0 but the zero factor gets a gradient as soon as the head's input is non-zero
  (the released heads are all-zero, so the gradient of every factor is multiplied by another zero
  factor and the weights never move; only the bias learns). Once the zero factor has moved, the
  gradient reaches the other factors, the trunks, the mixing layers and the encoders;
* the first encoder layer (its input ``z`` is signed) has factors ``N(0, 1/n_k)`` (so the mode
  product keeps the second moment) and bias ``0.1``; every other hidden layer (input ``≥ 0``,
  a ReLU output) has non-negative factors ``U(0, 2/n_k)`` (a constant input stays constant in
  mean) and bias ``0.1``. So no decoder ReLU is dead at initialisation whatever ``z`` is, and the
  heads' inputs are strictly positive: without this, tensors with width-1 modes (an output bias,
  a one-unit head) have scalar ReLU chains that are dead at initialisation with high probability,
  and then their heads never learn.

Everything is a pure function of ``z`` (no ``.item()``, no branching on values, no in-place ops
on inputs), so the geometry runs under ``torch.func.vmap`` and higher-order autograd.

**How it is computed.** ``a_i`` and ``μ_i`` depend on ``z`` directly, never on ``φ``, so no part of
``g`` waits for another: :meth:`MirrorMap.forward` runs every encoder (and every tensor decoder) of
the same tensor shape as one stacked computation, each mode product one batched matrix product over
the stack (:func:`stacked_mode_linear`). On a 4-CONV that is ~7× fewer operators than one tensor at
a time (:meth:`MirrorMap.reference`, the plain statement of the map, which tests compare with): the
flow's many small mode products made MetaMiDA's meta-step dispatch-bound. The parameters stay one
module per tensor (same initialisation, same checkpoints); the stacks are taken at each call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from innerloop.geometry.base import Geometry, GeometryConfig, register_geometry
from innerloop.geometry.blocks import adapted_blocks
from innerloop.params import group_by_shape, safe_key
from innerloop.rules.base import BuildContext
from innerloop.rules.kronecker import mode_product
from innerloop.types import Params

Shape = tuple[int, ...]
Init = Literal["signed", "nonneg", "head", "zero"]

#: bias of every hidden layer at initialisation (keeps the ReLUs alive, see the module docstring)
HIDDEN_BIAS = 0.1


def halve(shape: Shape) -> Shape:
    """Each mode halved (floor), never below 1."""
    return tuple(max(1, n // 2) for n in shape)


def mode_shape(shape: Sequence[int]) -> Shape:
    """The shape a tensor is processed in: its own, with a scalar treated as a 1-vector."""
    return tuple(shape) or (1,)


class ModeLinear(nn.Module):
    """``Y = X ×_1 W_1 ×_2 … ×_K W_K + B``: one ``(m_k, n_k)`` matrix per mode, bias of shape ``m``.

    Equivalent to ``vec(Y) = (W_K ⊗ … ⊗ W_1) vec(X) + vec(B)`` with column-major ``vec``.

    ``init``: ``"signed"`` factors ``N(0, 1/n_k)``; ``"nonneg"`` factors ``U(0, 2/n_k)``;
    ``"head"``: the first factor zero, the others ``N(0, 1/n_k)``, and the bias zero (the output is
    exactly zero while the first factor can still learn); ``"zero"``: every factor and the bias zero
    (the released code's heads: a factor of a tensor with two or more modes never gets a gradient).
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, *, init: Init, bias: float, dtype: torch.dtype):
        super().__init__()
        if len(in_shape) != len(out_shape):
            raise ValueError(f"mode counts differ: {in_shape} -> {out_shape}")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        factors = []
        for k, (m, n) in enumerate(zip(out_shape, in_shape, strict=True)):
            w = torch.empty(m, n, dtype=dtype)
            if init == "nonneg":
                nn.init.uniform_(w, 0.0, 2.0 / n)
            elif init == "zero" or (init == "head" and k == 0):
                nn.init.zeros_(w)
            else:
                nn.init.normal_(w, 0.0, 1.0 / math.sqrt(n))
            factors.append(nn.Parameter(w))
        self.factors = nn.ParameterList(factors)
        self.bias = nn.Parameter(torch.full(out_shape, 0.0 if init in ("head", "zero") else bias, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        for k, w in enumerate(self.factors):
            x = mode_product(x, w, k)
        return x + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}"


def stacked_mode_linear(x: Tensor, layers: Sequence[ModeLinear]) -> Tensor:
    """``layers[g](x[g])`` for every ``g`` of the stack ``x [G, n_1, …, n_K]`` at once (the layers
    have equal shapes). Each mode product is one batched matrix product on the leading mode; the
    result's mode then moves to the back, so after ``K`` products the modes are in order again."""
    g, shape = x.shape[0], x.shape[1:]
    for k in range(len(shape)):
        mats = torch.stack([layer.factors[k] for layer in layers])  # [G, m_k, n_k]
        y = torch.bmm(mats, x.reshape(g, shape[k], -1))  # [G, m_k, the other modes]
        x = torch.movedim(y.reshape(g, mats.shape[1], *x.shape[2:]), 1, -1)
    return x + torch.stack([layer.bias for layer in layers])


class Encoder(nn.Module):
    """``e_j``: a tensor of shape ``s`` → ``depth`` ReLU mode-product layers → a flat vector of
    ``prod(h^depth(s))`` features."""

    def __init__(self, shape: Sequence[int], depth: int, dtype: torch.dtype):
        super().__init__()
        shapes = [mode_shape(shape)]
        for _ in range(depth):
            shapes.append(halve(shapes[-1]))
        self.shape = shapes[0]
        self.layers = nn.ModuleList(
            ModeLinear(a, b, init="signed" if i == 0 else "nonneg", bias=HIDDEN_BIAS, dtype=dtype)
            for i, (a, b) in enumerate(zip(shapes[:-1], shapes[1:], strict=True))
        )
        self.out_features = math.prod(shapes[-1])

    def forward(self, z: Tensor) -> Tensor:
        h = z.reshape(self.shape)
        for layer in self.layers:
            h = F.relu(layer(h))
        return h.reshape(-1)


class TensorDecoder(nn.Module):
    """The part of ``d_i`` for one tensor: bottleneck ``h^depth(s)`` → ``depth − 1`` ReLU
    mode-product layers → ``h(s)`` → two heads to ``s`` (``a`` and ``μ``)."""

    def __init__(self, shape: Sequence[int], depth: int, dtype: torch.dtype, heads: Init = "head"):
        super().__init__()
        self.shape = tuple(shape)
        shapes = [mode_shape(shape)]
        for _ in range(depth):
            shapes.append(halve(shapes[-1]))
        shapes.reverse()  # bottleneck first: h^D(s), …, h(s), s
        self.bottleneck = shapes[0]
        self.trunk = nn.ModuleList(
            ModeLinear(a, b, init="nonneg", bias=HIDDEN_BIAS, dtype=dtype)
            for a, b in zip(shapes[:-2], shapes[1:-1], strict=True)
        )
        self.scale_head = ModeLinear(shapes[-2], shapes[-1], init=heads, bias=0.0, dtype=dtype)
        self.shift_head = ModeLinear(shapes[-2], shapes[-1], init=heads, bias=0.0, dtype=dtype)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        h = h.reshape(self.bottleneck)
        for layer in self.trunk:
            h = F.relu(layer(h))
        return self.scale_head(h).reshape(self.shape), self.shift_head(h).reshape(self.shape)


class BlockDecoder(nn.Module):
    """``d_i``: the flat context ``c_i`` → mixing layer (dense) → ReLU → split into the bottlenecks of
    the block's tensors → one :class:`TensorDecoder` each."""

    def __init__(self, context: int, shapes: Sequence[Sequence[int]], depth: int, dtype: torch.dtype,
                 heads: Init = "head"):
        super().__init__()
        self.tensors = nn.ModuleList(TensorDecoder(s, depth, dtype, heads) for s in shapes)
        self.sizes = [math.prod(t.bottleneck) for t in self.tensors]
        self.mix = ModeLinear((context,), (sum(self.sizes),), init="nonneg", bias=HIDDEN_BIAS, dtype=dtype)

    def forward(self, c: Tensor) -> list[tuple[Tensor, Tensor]]:
        h = F.relu(self.mix(c))
        return [dec(piece) for dec, piece in zip(self.tensors, torch.split(h, self.sizes), strict=True)]


class MirrorMap(Geometry):
    """Mirror-descent geometry with a learned inverse mirror map ``g`` (blockIAF, see the module
    docstring). State: the dual variable ``z`` (a dict like the parameters); ``params(z) = g(z)``;
    ``step(z, u) = z + u``. At initialisation ``g`` is exactly the identity, so the geometry then
    reproduces the Euclidean one.

    Args:
        shapes: the inner-adapted tensors, by name, in ``named_parameters()`` order.
        scale: ``"sigmoid"`` for ``σ(a) = 2·sigmoid(a)``, ``"exp"`` for ``σ(a) = exp(a)``.
        depth: mode-product layers per encoder (and halvings of each mode before a decoder's
            bottleneck); the decoders have a mixing layer plus ``depth`` mode-product layers.
        dtype: dtype of the flow's parameters.
        heads: ``"learnable"`` (one zero factor per head, the default) or ``"zero"`` (every factor
            zero, as released: the weights of a head for a tensor with two or more modes then never
            move, only its bias and the heads of 1-D tensors learn).
        layers: the model's parameter names grouped by layer (:func:`~innerloop.geometry.blocks.model_layers`);
            a block is one layer's adapted tensors. Without it, tensors are grouped by module prefix.
    """

    def __init__(self, shapes: dict[str, torch.Size], *, scale: str = "sigmoid", depth: int = 3,
                 dtype: torch.dtype = torch.float32, heads: str = "learnable",
                 layers: Sequence[Sequence[str]] | None = None):
        super().__init__()
        if scale not in ("sigmoid", "exp"):
            raise ValueError(f"scale must be 'sigmoid' or 'exp', got {scale!r}")
        if heads not in ("learnable", "zero"):
            raise ValueError(f"heads must be 'learnable' or 'zero', got {heads!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        head_init: Init = "head" if heads == "learnable" else "zero"
        if not shapes:
            raise ValueError("the mirror geometry needs at least one adapted tensor")
        self.scale = scale
        self.names = list(shapes)
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        self.blocks = adapted_blocks(self.names, layers)
        first = self.blocks[0]
        # block 1: φ = z ⊙ σ(w) + b, identity at w = b = 0
        self.first_scale = nn.ParameterDict(
            {safe_key(n): nn.Parameter(torch.zeros(shapes[n], dtype=dtype)) for n in first})
        self.first_shift = nn.ParameterDict(
            {safe_key(n): nn.Parameter(torch.zeros(shapes[n], dtype=dtype)) for n in first})
        self.encoders = nn.ModuleDict(
            {safe_key(n): Encoder(shapes[n], depth, dtype) for block in self.blocks[:-1] for n in block})
        decoders, context = [], 0
        for prev, block in zip(self.blocks[:-1], self.blocks[1:], strict=True):
            context += sum(self.encoders[safe_key(n)].out_features for n in prev)
            decoders.append(BlockDecoder(context, [shapes[n] for n in block], depth, dtype, head_init))
        self.decoders = nn.ModuleList(decoders)
        # what forward computes together: encoders, and tensor decoders, of tensors of one shape
        encoded = [n for block in self.blocks[:-1] for n in block]
        self._encoder_groups = group_by_shape(encoded, lambda n: mode_shape(shapes[n]))
        self._tensor_decoder = {n: dec for block, d in zip(self.blocks[1:], self.decoders, strict=True)
                                for n, dec in zip(block, d.tensors, strict=True)}
        self._decoder_groups = group_by_shape(list(self._tensor_decoder), lambda n: shapes[n])

    def sigma(self, a: Tensor) -> Tensor:
        return torch.exp(a) if self.scale == "exp" else 2.0 * torch.sigmoid(a)

    def _check(self, z: Params) -> None:
        if set(z) != set(self.names):
            raise KeyError(f"mirror map built for {sorted(self.names)}, got {sorted(z)}")

    def forward(self, z: Params) -> Params:
        """``g(z)`` (keys and order of ``z``), tensors of one shape computed together (module docstring)."""
        self._check(z)
        out: Params = {}
        for n in self.blocks[0]:
            k = safe_key(n)
            out[n] = z[n] * self.sigma(self.first_scale[k]) + self.first_shift[k]
        codes: dict[str, Tensor] = {}
        for names in self._encoder_groups:
            encoders = [self.encoders[safe_key(n)] for n in names]
            h = torch.stack([z[n].reshape(encoders[0].shape) for n in names])
            for depth in range(len(encoders[0].layers)):
                h = F.relu(stacked_mode_linear(h, [e.layers[depth] for e in encoders]))
            codes.update(zip(names, h.reshape(len(names), -1).unbind(0), strict=True))
        bottlenecks: dict[str, Tensor] = {}
        context: list[Tensor] = []
        for prev, block, decoder in zip(self.blocks[:-1], self.blocks[1:], self.decoders, strict=True):
            context += [codes[n] for n in prev]
            pieces = torch.split(F.relu(decoder.mix(torch.cat(context))), decoder.sizes)
            bottlenecks.update(zip(block, pieces, strict=True))
        for names in self._decoder_groups:
            decoders = [self._tensor_decoder[n] for n in names]
            first = decoders[0]
            h = torch.stack([bottlenecks[n].reshape(first.bottleneck) for n in names])
            for depth in range(len(first.trunk)):
                h = F.relu(stacked_mode_linear(h, [d.trunk[depth] for d in decoders]))
            a = stacked_mode_linear(h, [d.scale_head for d in decoders])
            mu = stacked_mode_linear(h, [d.shift_head for d in decoders])
            zs = torch.stack([z[n] for n in names])
            phi = zs * self.sigma(a.reshape(zs.shape)) + mu.reshape(zs.shape)
            out.update(zip(names, phi.unbind(0), strict=True))
        return {n: out[n] for n in z}

    def reference(self, z: Params) -> Params:
        """``g(z)`` computed one tensor at a time: the plain statement of the map, equal to
        :meth:`forward` up to rounding (the tests hold them to each other)."""
        self._check(z)
        out: Params = {}
        for n in self.blocks[0]:
            k = safe_key(n)
            out[n] = z[n] * self.sigma(self.first_scale[k]) + self.first_shift[k]
        context: list[Tensor] = []
        for prev, block, decoder in zip(self.blocks[:-1], self.blocks[1:], self.decoders, strict=True):
            context += [self.encoders[safe_key(n)](z[n]) for n in prev]
            for n, (a, mu) in zip(block, decoder(torch.cat(context)), strict=True):
                out[n] = z[n] * self.sigma(a) + mu
        return {n: out[n] for n in z}

    # ---- Geometry API ------------------------------------------------------------------------
    def init(self, params: Params) -> Params:
        return dict(params)

    def params(self, state: Params) -> Params:
        return self(state)

    def step(self, state: Params, updates: Params) -> Params:
        return {k: v + updates[k] for k, v in state.items()}


class MirrorConfig(GeometryConfig):
    """MetaMiDA's geometry. ``scale``: ``"sigmoid"`` (σ = 2·sigmoid, bounded; the default) or
    ``"exp"`` (released code). ``depth``: mode-product layers per encoder / decoder. ``heads``:
    ``"learnable"`` (the default) or ``"zero"`` (the released all-zero heads)."""

    name: Literal["mirror"] = "mirror"
    scale: Literal["sigmoid", "exp"] = "sigmoid"
    depth: PositiveInt = 3
    heads: Literal["learnable", "zero"] = "learnable"


@register_geometry("mirror", MirrorConfig)
def _build_mirror(cfg: MirrorConfig, ctx: BuildContext) -> MirrorMap:
    return MirrorMap(dict(ctx.shapes), scale=cfg.scale, depth=cfg.depth, dtype=ctx.dtype, heads=cfg.heads,
                     layers=ctx.layers)
