"""innerloop inside a plain PyTorch training loop: your own nn.Module, a learned update rule
(Meta-SGD), MAML's meta-gradient, and torch.optim — the loop, logging and checkpoints stay yours.

    python examples/plain_loop.py --steps 2000
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from innerloop import MAML, MetaSGD
from innerloop.data import Sine


class Net(nn.Module):
    """Any nn.Module: here a small regressor for sine tasks (1 input, 1 output)."""

    def __init__(self, hidden: int = 40):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build(seed: int = 0) -> tuple[Sine, MAML]:
    """The task family and the meta-learner (model + rule); the model's weights come from ``seed``."""
    torch.manual_seed(seed)
    family = Sine(k_shot=5)
    model = Net()
    rule = MetaSGD(MAML.adapted_shapes(model), lr=0.01)  # one learned step size per adapted weight
    algo = MAML(model, rule, loss_fn=family.loss, metric_fn=family.metric, inner_steps=1)
    return family, algo


def main(steps: int = 1000, meta_batch: int = 16, seed: int = 0, log_every: int = 100) -> dict:
    family, algo = build(seed)
    opt = torch.optim.Adam(algo.meta_parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)  # the task stream
    val = family.fixed_tasks(100, seed=2)
    before = algo.evaluate(val).metric.mean().item()
    stats: dict = {}
    for step in range(1, steps + 1):
        opt.zero_grad()
        stats = algo.meta_backward(family.sample(meta_batch, gen), path="loop")  # fills .grad; loss, metric
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step}: meta-loss {stats['loss']:.4f}")
    after = algo.evaluate(val).metric.mean().item()
    print(f"validation MSE after one inner step: {before:.4f} before meta-training, {after:.4f} after {steps} steps")
    return {"algo": algo, "before": before, "after": after, "stats": stats}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(a.steps, a.meta_batch, a.seed)
