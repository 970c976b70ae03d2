"""Choose which tensors the inner loop adapts by parameter-name prefix (``adapt_only`` / ``freeze``).

A prefix names a module or a parameter on dotted boundaries: ``"body.2"`` matches ``body.2.conv.weight``
but not ``body.20.conv.weight``. KFO's layer study uses it: adapt only one layer, or freeze one
layer (keep it out of the inner loop; it is still meta-learned when θ0 is).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def name_prefixes(names: Iterable[str]) -> list[str]:
    """Every dotted prefix of ``names`` (modules and the names themselves), in first-seen order."""
    out: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]), None)
    return list(out)


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def select_adapted(
    model: nn.Module, names: list[str], adapt_only: list[str] | None = None, freeze: list[str] | None = None
) -> list[str]:
    """``names`` (the tensors an algorithm adapts) restricted to ``adapt_only`` prefixes, minus ``freeze``.

    Raises ``ValueError`` for a prefix that matches no parameter of the model (the message lists the
    valid prefixes) and when nothing is left to adapt.
    """
    if adapt_only is None and not freeze:
        return list(names)
    valid = name_prefixes(n for n, _ in model.named_parameters())
    for key, prefixes in (("adapt_only", adapt_only), ("freeze", freeze)):
        unknown = [p for p in prefixes or [] if p not in valid]
        if unknown:
            raise ValueError(
                f"algorithm.{key}: no parameter of the model is named {', '.join(map(repr, unknown))} or below it "
                f"(valid names: {', '.join(valid)})"
            )
    kept = [n for n in names if adapt_only is None or any(matches(n, p) for p in adapt_only)]
    kept = [n for n in kept if not any(matches(n, p) for p in freeze or [])]
    if not kept:
        raise ValueError(
            f"algorithm.adapt_only={adapt_only} / freeze={freeze} leave no tensor to adapt in the inner "
            f"loop (the algorithm adapts: {', '.join(names)})"
        )
    return kept
