"""The hand-written plain-PyTorch reference (no library): ``torch.autograd.grad`` through the inner
steps of a functional Conv4, what the others are checked against in tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.bench.peers.case import Config, Runner, grads_by_name, make_problem, param_names


def reference_forward(params: list[Tensor], x: Tensor, eps: float = 1e-5) -> Tensor:
    """Conv4 written out with ``torch.nn.functional`` (params in ``Conv4.parameters()`` order)."""
    *blocks, head_w, head_b = params
    for i in range(0, len(blocks), 4):
        w, b, gamma, beta = blocks[i : i + 4]
        x = F.conv2d(x, w, b, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), head_w, head_b)


def build_plain(cfg: Config) -> Runner:
    model, batch = make_problem(cfg)
    names = param_names(model)
    theta = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in theta] if cfg.spec.rule == "meta_sgd" else None
    second_order = not cfg.spec.first_order

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            fast = list(theta)
            lrs = alphas if alphas is not None else [cfg.lr] * len(fast)
            for _ in range(cfg.steps):
                loss = F.cross_entropy(reference_forward(fast, sx), sy)
                grads = torch.autograd.grad(loss, fast, create_graph=second_order)
                fast = [p - a * g for p, a, g in zip(fast, lrs, grads, strict=True)]
            (F.cross_entropy(reference_forward(fast, qx), qy) / n).backward()

    return Runner(theta + (alphas or []), meta_backward, lambda: grads_by_name(names, theta, alphas))
