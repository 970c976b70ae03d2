"""Ours: :class:`innerloop.MAML` on each of our execution paths (``ours:PATH``), and on the one the
library itself would pick (``ours:auto``: ``choose_path(algo, "auto", device)``, resolved in the
case's process because the choice depends on its thread count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop import MAML, SGD, MetaSGD
from innerloop.bench.peers.case import Config, Runner, Unsupported, grads_by_name, make_problem, param_names
from innerloop.executors import resolve
from innerloop.experiments.build import choose_path
from innerloop.params import safe_key

#: Our execution paths, one column each (``--libraries ours``). A path the executor registry does
#: not know is reported as "n/a" instead of failing.
OUR_PATHS: list[str] = ["loop", "threads", "vmap"]
#: Not an executor: whatever ``choose_path`` picks, the column the summary compares with the peers.
AUTO = "auto"


def our_paths() -> list[str]:
    """The paths ``--libraries ours`` expands to: auto first, then every path in OUR_PATHS."""
    return [AUTO, *OUR_PATHS]


def ours_path_problem(path: str) -> str | None:
    """Why our algorithm cannot run execution ``path`` (``None`` if it can): the registry's message
    for a name it does not know."""
    if path == AUTO:
        return None
    try:
        resolve(path)
    except ValueError as e:
        return str(e)
    return None


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(-1) == y).to(out.dtype).mean()


def build_ours(cfg: Config, path: str) -> Runner:
    why = ours_path_problem(path)
    if why:
        raise Unsupported(why)
    model, batch = make_problem(cfg)
    names = param_names(model)
    if cfg.spec.rule == "meta_sgd":
        rule = MetaSGD({n: p.shape for n, p in model.named_parameters()}, cfg.lr)
    else:
        rule = SGD(cfg.lr)
    algo = MAML(model, rule, loss_fn=F.cross_entropy, metric_fn=_accuracy, inner_steps=cfg.steps,
                first_order=cfg.spec.first_order).to(cfg.device)
    path = choose_path(algo, path, torch.device(cfg.device))

    def named_grads():
        alphas = [rule.alpha[safe_key(n)] for n in names] if cfg.spec.rule == "meta_sgd" else None
        return grads_by_name(names, model.parameters(), alphas)

    return Runner(algo.meta_parameters(), lambda: algo.meta_backward(batch, path), named_grads, path)
