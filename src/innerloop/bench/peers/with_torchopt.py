"""TorchOpt's functional ``sgd`` (``init`` / ``update`` / ``apply_updates``) on the plain copy of our Conv4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from innerloop.bench.peers.case import Config, Runner, grads_by_name, make_problem, param_names, plain_copy


def build_torchopt(cfg: Config) -> Runner:
    import torchopt  # optional: installed by `make peers`; libraries.build checked it is importable

    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    pnames = param_names(plain)
    theta = tuple(plain.parameters())
    meta_sgd = cfg.spec.rule == "meta_sgd"
    # torchopt.sgd takes one scalar lr: Meta-SGD's per-element update is written as a pytree and
    # applied with torchopt.apply_updates
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in theta] if meta_sgd else None
    inner = torchopt.sgd(lr=cfg.lr)
    second_order = not cfg.spec.first_order

    def fmodel(params, x):
        return torch.func.functional_call(plain, dict(zip(pnames, params, strict=True)), (x,))

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            params = theta
            state = inner.init(params)
            for _ in range(cfg.steps):
                loss = F.cross_entropy(fmodel(params, sx), sy)
                grads = torch.autograd.grad(loss, params, create_graph=second_order)
                if alphas is not None:
                    updates = tuple(-a * g for a, g in zip(alphas, grads, strict=True))
                else:
                    updates, state = inner.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            (F.cross_entropy(fmodel(params, qx), qy) / n).backward()

    return Runner(list(theta) + (alphas or []), meta_backward, lambda: grads_by_name(names, theta, alphas))
