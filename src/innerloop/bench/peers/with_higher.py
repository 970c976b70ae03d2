"""higher's ``innerloop_ctx`` (a differentiable ``torch.optim.SGD``) on the plain copy of our Conv4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from innerloop.bench.peers.case import Config, Runner, grads_by_name, make_problem, param_names, plain_copy


def build_higher(cfg: Config) -> Runner:
    import higher  # optional: installed by `make peers`; libraries.build checked it is importable

    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    params = list(plain.parameters())
    # one parameter group per tensor, so that Meta-SGD can override each group's lr with a tensor
    inner_opt = torch.optim.SGD([{"params": [p]} for p in params], lr=cfg.lr)
    meta_sgd = cfg.spec.rule == "meta_sgd"
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in params] if meta_sgd else None
    fo = cfg.spec.first_order
    # First order: the idiomatic form detaches the fast weights (track_higher_grads=False) and copies
    # the query gradient of the adapted weights onto θ0. With Meta-SGD the path to the learning
    # rates must stay, so the fast weights are tracked and only the support gradients detached.
    detach_all = fo and not meta_sgd
    grad_callback = (lambda gs: [g.detach() for g in gs]) if fo and meta_sgd else None

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            with higher.innerloop_ctx(plain, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not detach_all) as (fmodel, diffopt):
                for _ in range(cfg.steps):
                    kw = {"override": {"lr": alphas}} if alphas is not None else {}
                    if grad_callback is not None:
                        kw["grad_callback"] = grad_callback
                    diffopt.step(F.cross_entropy(fmodel(sx), sy), **kw)
                qloss = F.cross_entropy(fmodel(qx), qy) / n
                if detach_all:
                    for p, g in zip(params, torch.autograd.grad(qloss, list(fmodel.parameters())), strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    qloss.backward()

    return Runner(params + (alphas or []), meta_backward, lambda: grads_by_name(names, params, alphas))
