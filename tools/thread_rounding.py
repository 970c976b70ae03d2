"""Issue 15 item 7: is the threads executor's float32 difference from the loop (5-shot, second
order) float32 sensitivity, or a bug? Compare the loop with 1 and 2 intra-op threads, the threads
executor, and a float64 loop, on the same tasks and initial weights.

    .venv/bin/python tools/thread_rounding.py [--meta-batch 8] [--shot 5]

Prints, for each float32 meta-gradient, max |Δg| against the others divided by max |g| of the
float64 reference. Nothing is timed.
"""

from __future__ import annotations

import argparse

import torch

from innerloop.bench.meta_step import build
from innerloop.executors import Loop, Threads


def meta_grad(dtype: torch.dtype, executor, threads: int, workload: str, meta_batch: int) -> torch.Tensor:
    torch.set_num_threads(threads)
    algo, batch = build(workload, "sgd", False, meta_batch)
    algo = algo.to(dtype)
    batch = type(batch)(*(t.to(dtype) if t.is_floating_point() else t for t in batch))
    algo.zero_grad()
    algo.meta_backward(batch, executor)
    return torch.cat([p.grad.reshape(-1).double() for p in algo.meta_parameters()])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--shot", type=int, default=5, choices=[1, 5])
    a = p.parse_args()
    w = f"omniglot-{a.shot}shot"
    ref = meta_grad(torch.float64, Loop(), 1, w, a.meta_batch)
    scale = ref.abs().max().item()
    runs = {
        "loop, 1 thread": meta_grad(torch.float32, Loop(), 1, w, a.meta_batch),
        "loop, 2 threads": meta_grad(torch.float32, Loop(), 2, w, a.meta_batch),
        "threads executor (2 workers)": meta_grad(torch.float32, Threads(), 2, w, a.meta_batch),
        "loop, 2 threads, again": meta_grad(torch.float32, Loop(), 2, w, a.meta_batch),
    }
    print(f"{w}, second order, meta-batch {a.meta_batch}; max|g| (float64) = {scale:.3g}")
    names = list(runs)
    print("float32 vs float64 reference: " + ", ".join(
        f"{n}: {(runs[n] - ref).abs().max().item() / scale:.2e}" for n in names))
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            d = (runs[x] - runs[y]).abs().max().item()
            print(f"  {x} vs {y}: max|Δg| / max|g| = {d / scale:.2e}" + ("  (bit for bit)" if d == 0 else ""))


if __name__ == "__main__":
    main()
