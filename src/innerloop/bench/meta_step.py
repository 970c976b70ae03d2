"""Meta-step benchmark: median seconds per meta-step, tasks/s and peak memory of both execution
paths, first and second order, on sine regression and an Omniglot-shaped synthetic batch.

Each case runs in its own process so that peak resident memory (``ru_maxrss``) belongs to it
alone. Nothing here asserts a time: it prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from innerloop import MAML, SGD, MetaSGD, registry
from innerloop.bench.device import memory_kind, peak_mb, peak_memory, refuse_unavailable, reset_peak, synchronize
from innerloop.bench.sections import write_section
from innerloop.data import Sine
from innerloop.models import MLP, Conv4
from innerloop.types import Task

WORKLOADS = {
    # name: description
    "sine": "sine 1-40-40-1, K=5, 100 query, 1 step, meta-batch 25",
    "omniglot-1shot": "1x28x28, 4-CONV-64, 5-way 1-shot, 15 query/class, 5 steps, meta-batch 8",
    "omniglot-5shot": "1x28x28, 4-CONV-64, 5-way 5-shot, 15 query/class, 5 steps, meta-batch 8",
}


def _accuracy(out, y):
    return (out.argmax(-1) == y).to(out.dtype).mean()


def build(workload: str, rule: str, first_order: bool = False, meta_batch: int | None = None, steps: int | None = None,
          **options):
    """The workload's meta-algorithm and one meta-batch; ``options`` go to the MAML constructor
    (memory controls such as ``second_order_steps`` or ``checkpoint``)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if workload == "sine":
        fam = Sine(5, 100)
        model = MLP(1, [40, 40], 1)
        batch = fam.sample(meta_batch or 25, g)
        loss, metric, default_steps, lr = fam.loss, fam.metric, 1, 0.01
    else:
        shot = 1 if workload == "omniglot-1shot" else 5
        n_way, query, b = 5, 15, meta_batch or 8
        model = Conv4((1, 28, 28), n_way, channels=64)
        sx = torch.rand(b, n_way * shot, 1, 28, 28, generator=g)
        qx = torch.rand(b, n_way * query, 1, 28, 28, generator=g)
        sy = torch.arange(n_way).repeat_interleave(shot).expand(b, -1).contiguous()
        qy = torch.arange(n_way).repeat_interleave(query).expand(b, -1).contiguous()
        batch = Task(sx, sy, qx, qy)
        loss, metric, default_steps, lr = F.cross_entropy, _accuracy, 5, 0.4
    shapes = {n: p.shape for n, p in model.named_parameters()}
    steps = steps or default_steps
    r = MetaSGD(shapes, lr) if rule == "meta_sgd" else SGD(lr)
    algo = MAML(model, r, loss_fn=loss, metric_fn=metric, inner_steps=steps, first_order=first_order,
                **options)
    return algo, batch


def run_case(workload: str, path: str, order: int, rule: str, repeats: int, meta_batch: int | None,
             device: str = "cpu") -> dict:
    dev = torch.device(device)
    algo, batch = build(workload, rule, order == 1, meta_batch)
    algo, batch = algo.to(dev), batch.to(dev)  # built on the CPU so that every device gets the same problem
    reset_peak(dev)
    opt = torch.optim.Adam(algo.meta_parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(batch, path)
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(dev)
        t = time.perf_counter()
        step()
        synchronize(dev)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "workload": workload,
        "path": path,
        "order": order,
        "rule": rule,
        "meta_batch": batch.num_tasks,
        "median_s": med,
        "tasks_per_s": batch.num_tasks / med,
        **peak_memory(dev),
        "device": str(dev),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m innerloop.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--paths", nargs="+", default=["loop", "threads", "vmap"], choices=registry.names("executor"))
    p.add_argument("--orders", nargs="+", type=int, default=[2, 1], choices=[1, 2])
    p.add_argument("--rule", default="sgd", choices=["sgd", "meta_sgd"])
    p.add_argument("--repeats", type=int, default=None, help="timed meta-steps (default: 20 sine, 3 conv)")
    p.add_argument("--meta-batch", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (on CUDA: synchronized timing, "
                   "memory from torch.cuda.max_memory_allocated)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--markdown", help="rewrite the 'bench' section of this Markdown file with the tables")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    a = p.parse_args(argv)
    if a.case:
        w, path, order = a.case.split(":")
        reps = a.repeats or (20 if w == "sine" else 3)
        print(json.dumps(run_case(w, path, int(order), a.rule, reps, a.meta_batch, a.device)))
        return 0
    if refuse_unavailable(a.device):
        return 2
    rows = []
    mem = "peak CUDA MB" if torch.device(a.device).type == "cuda" else "peak RSS MB"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    for w in a.workloads:
        print(f"\n{w}: {WORKLOADS[w]}")
        print(f"{'path':6} {'order':>5} {'s/meta-step':>12} {'tasks/s':>9} {mem:>12}")
        for order in a.orders:
            for path in a.paths:
                cmd = [sys.executable, "-m", "innerloop.bench", "--case", f"{w}:{path}:{order}", "--rule", a.rule,
                       "--device", a.device]
                if a.repeats:
                    cmd += ["--repeats", str(a.repeats)]
                if a.meta_batch:
                    cmd += ["--meta-batch", str(a.meta_batch)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{path:6} {order:>5} failed: {r.stderr.strip().splitlines()[-1:]}")
                    continue
                row = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{path:6} {order:>5} {row['median_s']:>12.4f} {row['tasks_per_s']:>9.1f} "
                      f"{peak_mb(row):>12.0f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    if a.markdown:
        write_section(Path(a.markdown), markdown(rows, argv if argv is not None else sys.argv[1:]), tag="bench")
    return 0


def markdown(rows: list[dict], argv: list[str]) -> str:
    """The measured rows as Markdown tables, one per workload, with the command that made them."""
    cmd = " ".join(["python -m innerloop.bench", *argv])
    out = [
        "## Meta-step benchmark",
        "",
        f"Written by `{cmd}` — torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}. Median of timed "
        f"meta-steps after one warm-up step (forward, meta-gradient and Adam step) on "
        f"{rows[0].get('device', 'cpu') if rows else 'cpu'}; {memory_kind(rows)} of the process that ran the case.",
        "",
    ]
    for w in dict.fromkeys(r["workload"] for r in rows):
        out += [f"**{w}** ({WORKLOADS[w]}, rule {rows[0]['rule']})", "",
                f"| path | order | s / meta-step | tasks / s | {memory_kind(rows)} (MB) |", "|---|---|---|---|---|"]
        for r in rows:
            if r["workload"] == w:
                out.append(f"| {r['path']} | {r['order']} | {r['median_s']:.4f} | {r['tasks_per_s']:.1f} | "
                           f"{peak_mb(r):.0f} |")
        out.append("")
    return "\n".join(out)
