"""ALFA (Baik et al., NeurIPS 2020): a per-task, per-step learning rate and weight decay per tensor.

For the ``N`` inner-adapted tensors a generator ``g_φ`` reads the task state of the current step,
``τ = [mean(θ_1) … mean(θ_N), mean(g_1) … mean(g_N)]`` (``2N`` values; the gradient means are
detached by default, ``detach_grad_input=False`` keeps them in the graph), and outputs
``[α¹_1 … α¹_N, β¹_1 … β¹_N]``. Step ``j`` then updates every tensor ``l`` as ::

    θ_l ← (1 − β¹_l β⁰_{l,j} B_l) ⊙ θ_l − α¹_l α⁰_{l,j} g_l

and the rule returns the update ``u = −(β¹_l β⁰_{l,j} B_l) ⊙ θ_l − α¹_l α⁰_{l,j} g_l`` (new − old).

Detaching the gradient means is a stop-gradient on a path the forward value does depend on (under
second-order MAML the means change with θ0 and, from the second step on, with the rule's own
parameters), so the meta-gradient is then not the finite-difference derivative of the meta-loss;
exact derivative checks use ``detach_grad_input=False``.

* ``g_φ``: ``generator_layers=3`` linear layers ``2N→2N→2N→2N`` with ReLU between them and no
  output nonlinearity (the paper); ``generator_layers=2`` is the later released code.
  ``generator_init="default"`` keeps PyTorch's default ``nn.Linear`` init (as in the paper);
  ``"sgd"`` zeroes the last layer's weight and sets its bias to ``α¹ = 1, β¹ = 0``, so the
  freshly built rule is plain SGD at ``lr``. The last layer then gets a meta-gradient at once and
  the earlier layers from the second meta-step on (their gradient flows through that weight).
* ``α⁰, β⁰``: meta-learned post-multipliers, ``num_steps + 1`` per tensor (step ``j`` uses entry
  ``j``, as LSLR), initialised to ``α⁰ = lr`` and ``β⁰ = weight_decay · lr`` for a learned init,
  ``β⁰ = 1`` for a random init. Stored as is (unconstrained), like the released code.
* ``B_l``: ``1`` for a learned init; for a random init a per-element meta-learned decay tensor
  of the tensor's shape, initialised to ``random_init_weight_decay`` (5e-6).
* The variant follows ``BuildContext.learned_init`` (the random-init algorithm builds with
  ``learned_init=False``); ``random_init=True/False`` overrides it.

**L2F** (``l2f=True``, Baik et al., CVPR 2020, as shipped with ALFA): before the first step the
initialisation is attenuated per task, ``θ0_l ← γ_l θ0_l`` with
``γ = sigmoid(MLP([mean(g_1) … mean(g_N)]))`` and ``g`` the support gradient at ``θ0``. The MLP
is ``N→N→N`` with a ReLU between. By default (``l2f_init="released"``) both layers keep
PyTorch's default init, as in the released code (baiksung/ALFA ``few_shot_learning_system.py``):
``γ`` then starts near ``sigmoid(last bias)``, about 0.5 give or take the init's spread, so the
first meta-steps see θ0 roughly halved. ``l2f_init="constant"`` (our earlier default) instead
scales the last layer's weight by 0.1 and sets its bias to ``logit(l2f_gamma_init)`` (0.99): ``γ``
starts within about 1e-3 of it and every weight still gets a meta-gradient from the first meta-step. The
gradient means enter the MLP in the graph (second order under MAML, as the released code);
``l2f_detach_grad_input=True`` detaches them.

``report`` gives the generated per-tensor learning rate ``α¹ α⁰`` and decay ``β¹ β⁰`` of the last
step as ``alpha.<name>`` and ``beta.<name>`` (for a random init the element-wise decay is
``β¹ β⁰ B``). BN γ/β being excluded from adaptation is decided by the algorithm, not here.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import Tensor, nn

from innerloop.params import group_by_shape, per_tensor_parameters, safe_key
from innerloop.rules.base import BuildContext, RuleConfig, UpdateRule, register_rule
from innerloop.types import Params


class ALFAState(NamedTuple):
    """What ``report`` needs: the generated rate and decay of the last step, one value per tensor."""

    alpha: Tensor  # [N] α¹_l α⁰_{l,j}
    beta: Tensor  # [N] β¹_l β⁰_{l,j}


def _mlp(widths: list[int], dtype: torch.dtype) -> nn.Sequential:
    """Linear layers with ReLU between, PyTorch's default init drawn in float64 and rounded once."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, dtype=torch.float64))
    return nn.Sequential(*layers).to(dtype)


def grad_means(grads: Params, names: list[str], detach: bool) -> Tensor:
    """[N] the mean of each tensor's gradient (the layer-wise learning state)."""
    return torch.stack([(grads[k].detach() if detach else grads[k]).mean() for k in names])


def attenuator(n: int, gamma_init: float | None, dtype: torch.dtype) -> nn.Sequential:
    """L2F's ``N→N→N`` MLP: PyTorch's init as released (``gamma_init=None``), or with its last
    layer's weight × 0.1 and bias ``logit(gamma_init)``, so that ``γ`` starts near ``gamma_init``."""
    mlp = _mlp([n, n, n], dtype)
    if gamma_init is None:
        return mlp
    if not 0.0 < gamma_init < 1.0:
        raise ValueError(f"the L2F gamma init must lie in (0, 1), got {gamma_init}")
    with torch.no_grad():
        mlp[-1].weight.mul_(0.1)
        mlp[-1].bias.fill_(math.log(gamma_init / (1.0 - gamma_init)))
    return mlp


class ALFA(UpdateRule):
    def __init__(
        self,
        shapes: dict[str, torch.Size],
        num_steps: int,
        lr: float,
        *,
        random_init: bool = False,
        generator_layers: int = 3,
        generator_init: str = "default",
        detach_grad_input: bool = True,
        weight_decay: float = 5e-4,
        random_init_weight_decay: float = 5e-6,
        l2f: bool = False,
        l2f_init: str = "released",
        l2f_gamma_init: float = 0.99,
        l2f_detach_grad_input: bool = False,
        state_input: str = "both",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.built_for = {n: torch.Size(s) for n, s in shapes.items()}
        dtype = dtype or torch.get_default_dtype()
        if not shapes:
            raise ValueError("ALFA needs at least one inner-adapted tensor")
        if generator_layers not in (2, 3):
            raise ValueError(f"generator_layers must be 2 or 3, got {generator_layers}")
        if state_input not in ("both", "weights", "gradients"):
            raise ValueError(f"state_input must be 'both', 'weights' or 'gradients', got {state_input!r}")
        self.state_input = state_input
        self.names = list(shapes)
        self.index = {k: i for i, k in enumerate(self.names)}
        self.num_steps = int(num_steps)
        self.random_init = bool(random_init)
        self.detach_grad_input = bool(detach_grad_input)
        n = len(self.names)

        # ALFA Table 5's ablation: the generator sees the layer means of the weights, of the gradients, or both
        width_in = 2 * n if state_input == "both" else n
        self.generator = _mlp([width_in] + [2 * n] * generator_layers, dtype)
        if generator_init == "sgd":
            last = self.generator[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(torch.cat([torch.ones(n), torch.zeros(n)]).to(dtype))
        elif generator_init != "default":
            raise ValueError(f"unknown generator_init {generator_init!r}; expected 'default' or 'sgd'")

        steps = self.num_steps + 1
        beta0 = 1.0 if self.random_init else float(weight_decay) * float(lr)
        self.alpha0 = per_tensor_parameters(
            shapes, lambda _n, _s: torch.full((steps,), float(lr), dtype=torch.float64), dtype)
        self.beta0 = per_tensor_parameters(
            shapes, lambda _n, _s: torch.full((steps,), beta0, dtype=torch.float64), dtype)
        # per-element decay B_l of the random-init variant (absent, i.e. B ≡ 1, for a learned init)
        self.decay = per_tensor_parameters(
            shapes, lambda _n, s: torch.full(s, float(random_init_weight_decay), dtype=torch.float64), dtype
        ) if self.random_init else None

        self.adjusts_init = bool(l2f)
        self.l2f_detach_grad_input = bool(l2f_detach_grad_input)
        if l2f:
            self.attenuator = attenuator(n, l2f_gamma_init if l2f_init == "constant" else None, dtype)
        else:
            self.attenuator = None

    # ---- per task ------------------------------------------------------------------------------
    def init(self, params: Params) -> ALFAState:
        ref = params[self.names[0]]
        return ALFAState(ref.new_zeros(len(self.names)), ref.new_zeros(len(self.names)))

    def _grad_means(self, grads: Params, detach: bool) -> Tensor:
        return grad_means(grads, self.names, detach)

    def gamma(self, grads: Params) -> Tensor:
        """L2F attenuation ``γ`` ([N], one per tensor) from the support gradient at θ0."""
        if self.attenuator is None:
            raise RuntimeError("gamma() needs an ALFA rule built with l2f=True")
        return torch.sigmoid(self.attenuator(self._grad_means(grads, self.l2f_detach_grad_input)))

    def adjust_init(self, params: Params, grads: Params, state: ALFAState) -> Params:
        gamma = self.gamma(grads)
        return {k: gamma[self.names.index(k)] * v if k in self.names else v for k, v in params.items()}

    def generate(self, params: Params, grads: Params) -> tuple[Tensor, Tensor]:
        """``(α¹, β¹)``, each [N], from the task state ``τ`` of the current step."""
        parts = []
        if self.state_input in ("both", "weights"):
            parts.append(torch.stack([params[k].mean() for k in self.names]))
        if self.state_input in ("both", "gradients"):
            parts.append(self._grad_means(grads, self.detach_grad_input))
        tau = torch.cat(parts)
        out = self.generator(tau)
        n = len(self.names)
        return out[:n], out[n:]

    def update(self, grads, state, params, *, step, **extra):
        if step > self.num_steps:
            raise ValueError(f"ALFA was built for {self.num_steps} steps but asked for step {step}")
        alpha1, beta1 = self.generate(params, grads)
        keys = [safe_key(k) for k in self.names]
        alpha = alpha1 * torch.stack([self.alpha0[k] for k in keys])[:, step]  # [N]
        beta = beta1 * torch.stack([self.beta0[k] for k in keys])[:, step]
        # Tensors of one shape are updated as one stack: the arithmetic is elementwise, so each value
        # is the one a per-tensor update gives, bit for bit, with a few operators instead of a few per
        # tensor (a 4-CONV has 18 adapted tensors in 5 shapes).
        updates: dict[str, Tensor] = {}
        for names in group_by_shape(self.names, lambda k: params[k].shape):
            idx = [self.index[k] for k in names]
            theta, g = torch.stack([params[k] for k in names]), torch.stack([grads[k] for k in names])
            per = (len(idx),) + (1,) * (theta.dim() - 1)
            a, b = alpha[idx].reshape(per), beta[idx].reshape(per)
            decay = b * torch.stack([self.decay[safe_key(k)] for k in names]) if self.decay is not None else b
            # −(decay ⊙ θ) − α g, not ((1 − decay) ⊙ θ − α g) − θ: the same update without the rounding
            # of a subtraction, so that decay = 0 and α = lr give plain SGD bit for bit
            updates.update(zip(names, (-(decay * theta) - a * g).unbind(0), strict=True))
        # the state only feeds report(): keep it out of the graph
        return {k: updates[k] for k in self.names}, ALFAState(alpha.detach(), beta.detach())

    def report(self, state: ALFAState) -> dict[str, Tensor]:
        out = {f"alpha.{k}": state.alpha[i] for i, k in enumerate(self.names)}
        out.update({f"beta.{k}": state.beta[i] for i, k in enumerate(self.names)})
        return out


class ALFAConfig(RuleConfig):
    name: Literal["alfa"] = "alfa"
    lr: PositiveFloat = 0.01
    generator_layers: Literal[2, 3] = 3
    generator_init: Literal["default", "sgd"] = "default"
    detach_grad_input: bool = True
    #: None: follow the algorithm (random init iff θ0 is not meta-learned)
    random_init: bool | None = None
    #: β⁰ = weight_decay · lr under a learned init
    weight_decay: NonNegativeFloat = 5e-4
    #: initial value of the per-element decay B of the random-init variant
    random_init_weight_decay: NonNegativeFloat = 5e-6
    l2f: bool = False
    # "released": PyTorch's default init, as the released code; "constant": γ starts at l2f_gamma_init
    l2f_init: Literal["released", "constant"] = "released"
    l2f_gamma_init: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    l2f_detach_grad_input: bool = False
    #: what the generator sees (ALFA Table 5): layer means of the weights and gradients, or one of them
    state_input: Literal["both", "weights", "gradients"] = "both"


@register_rule("alfa", ALFAConfig, sgd_equivalent={"generator_init": "sgd"},
               exact_gradient={"detach_grad_input": False})
def _build(cfg: ALFAConfig, ctx: BuildContext) -> ALFA:
    random_init = (not ctx.learned_init) if cfg.random_init is None else cfg.random_init
    return ALFA(ctx.shapes, ctx.num_steps, cfg.lr, random_init=random_init, generator_layers=cfg.generator_layers,
                generator_init=cfg.generator_init, detach_grad_input=cfg.detach_grad_input,
                weight_decay=cfg.weight_decay, random_init_weight_decay=cfg.random_init_weight_decay,
                l2f=cfg.l2f, l2f_init=cfg.l2f_init, l2f_gamma_init=cfg.l2f_gamma_init,
                l2f_detach_grad_input=cfg.l2f_detach_grad_input,
                state_input=cfg.state_input, dtype=ctx.dtype)
