"""Memory-control benchmark: peak resident memory (and seconds) of one meta-step against the number
of inner steps, for each memory control, on the Omniglot-shaped 4-CONV workload.

Controls: plain second order (loop), first order, second order through the last step only,
activation checkpointing (second order), checkpointing + last step only, vmap, and vmap in
chunks. Each (control, steps) case runs in its own process so ``ru_maxrss`` is its own. Nothing
is asserted; the script prints what it measured and can rewrite a section of a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from innerloop.bench.meta_step import WORKLOADS, build
from innerloop.bench.sections import write_section
from innerloop.executors import Executor, Loop, Vmap

# name: (executor, meta-algorithm options, description)
CONTROLS: dict[str, tuple[Executor, dict, str]] = {
    "second": (Loop(), {}, "second order, loop path"),
    "first": (Loop(), {"first_order": True}, "first order (FOMAML)"),
    "last1": (Loop(), {"second_order_steps": 1}, "second order through the last inner step only"),
    "ckpt": (Loop(), {"checkpoint": True}, "second order, activation checkpointing per inner step"),
    "ckpt+last1": (Loop(), {"checkpoint": True, "second_order_steps": 1}, "checkpointing + last step only"),
    "vmap": (Vmap(), {}, "second order, vmap over the meta-batch"),
    "vmap/2": (Vmap(chunk=2), {}, "second order, vmap in chunks of 2 tasks"),
}


def run_case(workload: str, control: str, steps: int, meta_batch: int, repeats: int) -> dict:
    executor, options, _ = CONTROLS[control]
    algo, batch = build(workload, "sgd", meta_batch=meta_batch, steps=steps, **options)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opt = torch.optim.Adam(algo.meta_parameters(), lr=1e-3)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(batch, executor)
        opt.step()
        times.append(time.perf_counter() - t)
    return {"workload": workload, "control": control, "steps": steps, "meta_batch": batch.num_tasks,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "baseline_rss_mb": base,
            "median_s": statistics.median(times), "threads": torch.get_num_threads()}


def markdown(rows: list[dict], argv: list[str], workload: str) -> str:
    steps = sorted({r["steps"] for r in rows})
    controls = list(dict.fromkeys(r["control"] for r in rows))
    cell = {(r["control"], r["steps"]): r for r in rows}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        "## Memory controls",
        "",
        f"Written by `python -m innerloop.bench.memory {' '.join(argv)}` — {WORKLOADS[workload].split(',')[0]}, "
        f"{workload}, torch {torch.__version__}, {rows[0]['threads']} threads, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}, load average at the end {load}. Peak RSS (MB) of a process that built the "
        f"model and a meta-batch of {rows[0]['meta_batch']} tasks and ran meta-steps; in brackets the median seconds "
        f"per meta-step. The process holds ≈{rows[0]['baseline_rss_mb']:.0f} MB before the first meta-step.",
        "",
        "| control | " + " | ".join(f"{s} steps" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for c in controls:
        cells = []
        for s in steps:
            r = cell.get((c, s))
            cells.append(f"{r['peak_rss_mb']:.0f} ({r['median_s']:.2f} s)" if r else "failed")
        out.append(f"| {c}: {CONTROLS[c][2]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m innerloop.bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="omniglot-1shot", choices=[w for w in WORKLOADS if w != "sine"])
    p.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=list(CONTROLS))
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="meta-steps per case (peak over all of them)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    p.add_argument("--markdown", help="rewrite the 'memory' section of this Markdown file")
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        control, steps = a.case.rsplit(":", 1)
        print(json.dumps(run_case(a.workload, control, int(steps), a.meta_batch, a.repeats)))
        return 0
    rows = []
    print(f"{a.workload}: {WORKLOADS[a.workload]} (steps varied), meta-batch {a.meta_batch}")
    print(f"{'control':12} {'steps':>5} {'peak RSS MB':>12} {'s/meta-step':>12}")
    for c in a.controls:
        for s in a.steps:
            cmd = [sys.executable, "-m", "innerloop.bench.memory", "--case", f"{c}:{s}", "--workload", a.workload,
                   "--meta-batch", str(a.meta_batch), "--repeats", str(a.repeats)]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{c:12} {s:>5} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{c:12} {s:>5} {row['peak_rss_mb']:>12.0f} {row['median_s']:>12.3f}", flush=True)
    if a.markdown and rows:
        write_section(Path(a.markdown), markdown(rows, argv, a.workload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
