"""Issue 18 item 2: why every library's float32 meta-gradient is 1e-2 to 3e-1 (of its largest
entry) away from the float64 one on the peers benchmark's problem. For each task of the meta-batch,
with no inner step (the plain query gradient) it prints how far the float32 gradient is from the
float64 one, and how many max-pool windows pick a different maximum in float32 than in float64.

    .venv/bin/python tools/float32_ties.py [--meta-batch 8] [--row 1shot-so]

Nothing is timed.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from innerloop.bench.peers.case import ROWS, Config, make_problem
from innerloop.bench.peers.plain import reference_forward


def query_grad_and_pool_indices(dtype: str, row: str, meta_batch: int, task: int):
    model, batch = make_problem(Config(row=row, meta_batch=meta_batch, dtype=dtype))
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    _, _, qx, qy = batch.index(task)
    grads = torch.autograd.grad(F.cross_entropy(reference_forward(theta, qx), qy), theta)
    indices, x = [], qx
    with torch.no_grad():
        for i in range(0, len(theta) - 2, 4):
            w, b, gamma, beta = theta[i : i + 4]
            x = F.batch_norm(F.conv2d(x, w, b, padding=1), None, None, gamma, beta, training=True)
            x, idx = F.max_pool2d(x, 2, return_indices=True)
            indices.append(idx)
            x = F.relu(x)
    return torch.cat([g.reshape(-1).double() for g in grads]), indices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--row", default="1shot-so", choices=list(ROWS))
    a = p.parse_args()
    torch.set_num_threads(1)
    for t in range(a.meta_batch):
        g32, i32 = query_grad_and_pool_indices("float32", a.row, a.meta_batch, t)
        g64, i64 = query_grad_and_pool_indices("float64", a.row, a.meta_batch, t)
        rel = ((g32 - g64).abs().max() / g64.abs().max()).item()
        flips = [int((x != y).sum()) for x, y in zip(i32, i64, strict=True)]
        windows = [x.numel() for x in i64]
        print(f"task {t}: float32 vs float64 query gradient {rel:.1e}; max-pool windows with another "
              f"maximum per layer {flips} of {windows}")


if __name__ == "__main__":
    main()
