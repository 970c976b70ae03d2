"""``chain`` in a config: rules applied in sequence (:class:`~innerloop.rules.base.Chain`), e.g.

    [rule]
    name = "chain"
    rules = [{name = "mlplr", lr_max = 2.0}, {name = "meta_sgd", lr = 1.0}]

Each entry is validated against its own rule's config when the config is (rules registered after
import included); every rule is built for the same adapted tensors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from innerloop.rules.base import RULES, BuildContext, Chain, RuleConfig, build_rule, register_rule


class ChainConfig(RuleConfig):
    name: Literal["chain"] = "chain"
    rules: list[Any] = Field(default_factory=lambda: [{"name": "meta_sgd"}], validate_default=True)

    @field_validator("rules")
    @classmethod
    def _each_rule(cls, rules: list[Any]) -> list[RuleConfig]:
        if not rules:
            raise ValueError("a chain needs at least one rule")
        out = []
        for i, r in enumerate(rules):
            if isinstance(r, RuleConfig):
                out.append(r)
                continue
            if not isinstance(r, dict) or "name" not in r:
                raise ValueError(f"rules[{i}] must be a table with a name, e.g. {{name = \"sgd\", lr = 0.1}}")
            if r["name"] == "chain" or r["name"] not in RULES:
                raise ValueError(f"rules[{i}]: unknown rule {r['name']!r} "
                                 f"(rules: {', '.join(n for n in RULES if n != 'chain')})")
            try:
                out.append(RULES[r["name"]].config(**r))
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise ValueError(f"rules[{i}] ({r['name']}): {problems}") from None
        return out


# a chain is as close to SGD as its rules are; the conformance suite checks chain(rule) ≡ rule for each
@register_rule("chain", ChainConfig)
def _build(cfg: ChainConfig, ctx: BuildContext) -> Chain:
    return Chain(*(build_rule(r, ctx) for r in cfg.rules))
