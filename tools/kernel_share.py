"""How much of one task's meta-step is convolution and linear-layer arithmetic (issue 18).

Every library calls the same convolution and matrix-multiply kernels; a rewrite of the rest (batch
norm, ReLU, max-pool, their first and second derivatives, copies, fills) can at best remove the
rest. This profiles the plain-PyTorch meta-step of the peers benchmark for one task on one thread
and splits the self time of its operators into those kernels and everything else; the ceiling on
any such rewrite is total ÷ kernels.

    python tools/kernel_share.py --rows 1shot-so 5shot-so 1shot-fo --repeats 3
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from innerloop.bench.peers.case import ROWS, Config
from innerloop.bench.peers.plain import build_plain

#: operators whose self time is arithmetic every library does the same way
KERNELS = ("mkldnn_convolution", "convolution_backward", "_convolution", "thnn_conv", "slow_conv", "addmm", "mm",
           "bmm", "matmul")


def is_kernel(name: str) -> bool:
    op = name.split("::")[-1]
    return op in KERNELS or "conv" in op and "backward" in op


def measure(row: str, meta_batch: int, repeats: int) -> tuple[float, float, list[tuple[str, float]]]:
    runner = build_plain(Config(row=row, meta_batch=meta_batch))
    runner.meta_backward()  # warm-up (allocator, oneDNN primitive cache)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            for p in runner.meta_parameters:
                p.grad = None
            runner.meta_backward()
    by_op: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        by_op[e.key] += e.self_cpu_time_total / 1e6 / repeats
    total = sum(by_op.values())
    kernels = sum(t for k, t in by_op.items() if is_kernel(k))
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    return total, kernels, top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["1shot-so", "5shot-so"], choices=list(ROWS))
    ap.add_argument("--meta-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for row in a.rows:
        total, kernels, top = measure(row, a.meta_batch, a.repeats)
        print(f"{row}: {total:.3f} s per meta-step of {a.meta_batch} task(s) on {a.threads} thread(s); "
              f"conv + matmul kernels {kernels:.3f} s = {kernels / total:.0%}; "
              f"ceiling of a rewrite of the rest {total / kernels:.2f}x")
        for k, t in top:
            print(f"    {t / total:6.1%}  {'kernel' if is_kernel(k) else '      '}  {k}")


if __name__ == "__main__":
    main()
