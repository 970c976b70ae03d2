"""The update-rule interface, composition, and the registry of rules.

An update rule maps the support gradients of one inner step to an *update* (the quantity the
geometry adds to the parameters; for plain SGD ``u = -lr * g``). Its meta-parameters are
``nn.Parameter``s of the module, so the outer optimizer trains them like any other weight.

Rules are pure in their inner state: ``update`` returns a new state instead of mutating one,
which is what lets the same code run in a Python loop over tasks and under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from innerloop import registry
from innerloop.types import Params

State = Any  # a pytree of tensors: (), a NamedTuple, or a tuple of states


class UpdateRule(nn.Module):
    """Base class of inner-loop update rules.

    Subclasses implement :meth:`update`; stateful rules also override :meth:`init`.
    ``update`` receives keyword extras from the inner loop (``step``, ``loss``, ``logits``,
    ``targets``, ``first_order``) and must accept and ignore those it does not need (``**extra``).
    ``grads`` are already detached when ``first_order`` is true; a rule that takes further inner
    gradients itself (KFO adapting its transform) detaches them too in that case.

    Everything in ``update`` must work under ``torch.func.vmap``: no ``.item()``, no Python
    branching on tensor values (use ``torch.where``), no in-place changes of inputs.
    """

    def init(self, params: Params) -> State:
        """Initial inner state for a task (default: stateless)."""
        return ()

    #: set to True by rules that change θ0 per task before the first step (e.g. ALFA's L2F);
    #: the inner loop then computes the support gradient at θ0 and calls :meth:`adjust_init`
    adjusts_init: bool = False

    #: False for rules whose update runs a ``torch.func`` transform (KFO's inner ``vjp``), which
    #: cannot run under activation checkpointing's saved-tensor hooks
    supports_checkpoint: bool = True

    #: the tensors (name → shape; ``None``: any shape) a rule with per-tensor meta-parameters was
    #: built for; the meta-algorithm checks it against what it adapts (:func:`check_built_for`)
    built_for: dict[str, torch.Size | None] | None = None

    def adjust_init(self, params: Params, grads: Params, state: State) -> Params:
        """Per-task change of the initial parameters, given the support gradient at θ0."""
        return params

    def update(
        self, grads: Params, state: State, params: Params, *, step: int, **extra: Any
    ) -> tuple[Params, State]:
        raise NotImplementedError

    def report(self, state: State) -> dict[str, Tensor]:
        """Scalars worth recording after a step (e.g. a generated learning rate). Default: none."""
        return {}

    def forward(self, grads: Params, state: State, params: Params, **kwargs: Any) -> tuple[Params, State]:
        return self.update(grads, state, params, **kwargs)


class Chain(UpdateRule):
    """Apply rules in sequence: the first receives the gradients, each next one the previous updates.

    The chain carries every flag of its rules: it adjusts θ0 when any rule does (each in order, from
    the same support gradient at θ0), and supports checkpointing only when all do, so a chain of
    one rule behaves exactly like that rule.
    """

    def __init__(self, *rules: UpdateRule):
        super().__init__()
        if not rules:
            raise ValueError("Chain needs at least one rule")
        self.rules = nn.ModuleList(rules)
        self.supports_checkpoint = all(r.supports_checkpoint for r in rules)
        self.adjusts_init = any(r.adjusts_init for r in rules)

    def init(self, params: Params) -> State:
        return tuple(r.init(params) for r in self.rules)

    def adjust_init(self, params: Params, grads: Params, state: State) -> Params:
        for rule, s in zip(self.rules, state, strict=True):
            if rule.adjusts_init:
                params = rule.adjust_init(params, grads, s)
        return params

    def update(self, grads, state, params, *, step, **extra):
        new_states = []
        updates = grads
        for rule, s in zip(self.rules, state, strict=True):
            updates, s = rule.update(updates, s, params, step=step, **extra)
            new_states.append(s)
        return updates, tuple(new_states)

    def report(self, state):
        out: dict[str, Tensor] = {}
        for i, (rule, s) in enumerate(zip(self.rules, state, strict=True)):
            out.update({f"{i}.{k}": v for k, v in rule.report(s).items()})
        return out


def check_built_for(module: nn.Module, shapes: dict[str, torch.Size], adapter: str) -> None:
    """Raise a ``ValueError`` naming the tensors when a rule (each rule of a chain) or geometry was built for
    other tensors or shapes than ``shapes``, the tensors ``adapter`` adapts."""
    parts = list(module.rules) if isinstance(module, Chain) else [module]
    for part in parts:
        want = getattr(part, "built_for", None)
        if want is None:
            continue
        problems = []
        if missing := [n for n in shapes if n not in want]:
            problems.append(f"adapted but not in the rule: {', '.join(missing)}")
        if extra := [n for n in want if n not in shapes]:
            problems.append(f"in the rule but not adapted (their meta-parameters would never learn): "
                            f"{', '.join(extra)}")
        if wrong := [f"{n} {tuple(want[n])} ≠ {tuple(s)}" for n, s in shapes.items()
                     if want.get(n) is not None and tuple(want[n]) != tuple(s)]:
            problems.append(f"shapes differ: {'; '.join(wrong)}")
        if problems:
            raise ValueError(f"{type(part).__name__} was built for other tensors than {adapter} adapts — "
                             + "; ".join(problems)
                             + f" (build it for {adapter}'s adapted tensors: e.g. {adapter}.adapted_shapes(model))")


def chain(*rules: UpdateRule) -> Chain:
    return Chain(*rules)


# ----------------------------------------------------------------------------------------------
# Registry: name -> (config model, builder). The config model is what a config file's [rule]
# table is validated against; the builder turns it into a module for the adapted tensors.


class RuleConfig(BaseModel):
    """Base of every rule's config (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class BuildContext:
    """What a rule needs to know to size its meta-parameters."""

    shapes: dict[str, torch.Size]  # the inner-adapted tensors, by parameter name
    num_steps: int  # the largest number of inner steps it will be asked to take (train or eval)
    dtype: torch.dtype = torch.float32  # dtype of the meta-parameters (that of the model)
    learned_init: bool = True  # False under the random-init algorithm (θ0 is not meta-learned)
    #: the model's parameter names grouped by layer (geometry.blocks.model_layers); None: unknown
    layers: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class RuleSpec:
    name: str
    config: type[RuleConfig]
    build: Callable[[Any, BuildContext], UpdateRule]
    #: config overrides under which the freshly built rule equals plain SGD with the config's ``lr``
    #: (checked by the conformance suite); ``None`` for a rule that never does (say why in its tests)
    sgd_equivalent: dict[str, Any] | None = None
    #: config overrides under which the meta-gradient is the exact derivative of the meta-loss
    #: (a rule whose defaults detach part of the graph on purpose names how to keep it)
    exact_gradient: dict[str, Any] | None = None


#: every registered rule: the "rule" table of :mod:`innerloop.registry` (one storage, read-only here)
RULES: dict[str, RuleSpec] = registry.table("rule")


def register_rule(name: str, config: type[RuleConfig], *, sgd_equivalent: dict[str, Any] | None = None,
                  exact_gradient: dict[str, Any] | None = None):
    """Decorator: register ``build(cfg, ctx) -> UpdateRule`` under ``name``.

    ``sgd_equivalent``: config overrides that make the rule at initialisation equal plain SGD
    (``{}`` when its defaults already do; omit for a rule that cannot). ``exact_gradient``:
    overrides that keep every path in the graph (used by the finite-difference check)."""

    def deco(build):
        registry.register("rule", name)(RuleSpec(name, config, build, sgd_equivalent, exact_gradient))
        return build

    return deco


def build_rule(cfg: RuleConfig, ctx: BuildContext) -> UpdateRule:
    return RULES[cfg.name].build(cfg, ctx)  # type: ignore[attr-defined]
