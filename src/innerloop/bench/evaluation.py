"""Evaluation benchmark: seconds to evaluate N test tasks (adapt S inner steps on each support set,
score the query set) on the omniglot-shaped 4-CONV workload, ours against a peer-style plain loop.

Ours is the library's own evaluation (``evaluate_tasks``, as the test phase of a training run
calls it, on the path ``choose_path(algo, "auto", device)`` picks); the plain loop is what a peer
library's evaluation amounts to (functional forward, ``torch.autograd.grad`` without
``create_graph``, query forward under ``torch.no_grad()``). Each runs in its own process, so its
peak RSS is its own; both see the same weights and tasks and their per-task accuracies are
compared. Nothing here asserts a time: it prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from innerloop.bench.child import run_child
from innerloop.bench.device import memory_kind, peak_mb, refuse_unavailable
from innerloop.bench.eval_cases import IMPLEMENTATIONS, EvalCase, run_case
from innerloop.bench.sections import write_section
from innerloop.experiments.checkpoint import save_text

TAG = "evaluation"


def _name(r: dict) -> str:
    if r["impl"] == "ours":
        return f"ours: auto ({r['path']})" if r.get("path") else "ours: auto"
    return "plain loop"


def max_acc_diff(a: dict, b: dict) -> float:
    """Largest per-task accuracy difference of two results on the same tasks."""
    return max((abs(x - y) for x, y in zip(a["accuracies"], b["accuracies"], strict=True)), default=0.0)


def _child(impl: str, shots: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "innerloop.bench.evaluation", "--case", impl, "--shots", str(shots),
           "--tasks", str(a.tasks), "--steps", str(a.steps), "--channels", str(a.channels),
           "--threads", str(a.threads), "--repeats", str(a.repeats), "--device", a.device]
    out = run_child(cmd)
    return {"impl": impl, "shots": shots, "failed": out} if isinstance(out, str) else out


def _mean_accuracy(r: dict) -> float:
    return sum(r["accuracies"]) / max(len(r["accuracies"]), 1)


def _line(r: dict) -> str:
    if "failed" in r:
        return f"failed: {r['failed']}"
    speed = f"{r['median_s']:>9.3f} s  {r['tasks_per_s']:>7.1f} tasks/s" if r["times_s"] else f"{'untimed':>27}"
    return f"{speed}  {peak_mb(r):>6.0f} MB  accuracy {_mean_accuracy(r):.4f}"


def markdown(rows: list[dict], diffs: dict[int, float], command: str) -> str:
    r0 = next(r for r in rows if "failed" not in r)
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    out = ["## Evaluation benchmark", "",
           f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} — torch {torch.__version__}, "
           f"{platform.machine()}, {r0['threads']} threads, device {r0['device']}, load average at the end {load}. "
           f"Median seconds to evaluate {r0['tasks']} synthetic 5-way tasks (15 query per class, 1x28x28, "
           f"4-CONV-{r0['channels']}, {r0['steps']} inner SGD steps of lr 0.4); {memory_kind(rows)} of the "
           "process that ran the case. ratio = plain loop ÷ ours (> 1: ours is faster).", "",
           f"| shots | implementation | s / evaluation | tasks / s | {memory_kind(rows)} (MB) | mean accuracy |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['shots']} | {r['impl']} | failed | | | |")
            continue
        speed = f"{r['median_s']:.3f} | {r['tasks_per_s']:.1f}" if r["times_s"] else "untimed | –"
        out.append(f"| {r['shots']} | {_name(r)} | {speed} | {peak_mb(r):.0f} | {_mean_accuracy(r):.4f} |")
    out.append("")
    for shots, d in diffs.items():
        o, p = (next(r for r in rows if r["shots"] == shots and r["impl"] == i) for i in IMPLEMENTATIONS)
        ratio = f"ratio {p['median_s'] / o['median_s']:.2f}, " if o["times_s"] and p["times_s"] else "untimed, "
        out.append(f"{shots}-shot: {ratio}max per-task accuracy difference {d:.2g}.")
    return "\n".join(out) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m innerloop.bench.evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=600, help="test tasks per evaluation")
    p.add_argument("--steps", type=int, default=10, help="inner SGD steps on each support set")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--channels", type=int, default=64, help="filters per conv layer")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each case's process")
    p.add_argument("--repeats", type=int, default=1, help="timed evaluations (0: accuracies only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (CUDA: synchronized timing, "
                   "memory from torch.cuda.max_memory_allocated)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--markdown", help=f"rewrite the '{TAG}' section of this Markdown file")
    p.add_argument("--case", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = _parser().parse_args(argv)
    if a.case:  # internal: one implementation in this process, JSON on the last line of stdout
        c = EvalCase(tasks=a.tasks, steps=a.steps, shots=a.shots[0], channels=a.channels, device=a.device)
        print(json.dumps(run_case(a.case, c, a.repeats, a.threads)))
        return 0
    if refuse_unavailable(a.device):
        return 2
    rows, diffs = [], {}
    print(f"torch {torch.__version__}, device {a.device}, {a.threads} threads per case, {a.tasks} tasks, "
          f"{a.steps} inner steps, 4-CONV-{a.channels}")
    for shots in a.shots:
        print(f"\n5-way {shots}-shot, 15 query", flush=True)
        pair = {}
        for impl in IMPLEMENTATIONS:
            r = pair[impl] = _child(impl, shots, a)
            rows.append(r)
            print(f"  {_name(r):<22}{_line(r)}", flush=True)
        if all("failed" not in r for r in pair.values()):
            diffs[shots] = max_acc_diff(pair["ours"], pair["plain"])
            o, p = pair["ours"], pair["plain"]
            ratio = f"ratio (plain ÷ ours) {p['median_s'] / o['median_s']:.2f}; " if o["times_s"] else ""
            print(f"  {ratio}max per-task accuracy difference {diffs[shots]:.2g}", flush=True)
    if a.json:
        save_text(json.dumps(rows, indent=2), a.json)
    if a.markdown and any("failed" not in r for r in rows):
        write_section(Path(a.markdown), markdown(rows, diffs, "python -m innerloop.bench.evaluation "
                                                 + shlex.join(argv)), tag=TAG)
        print(f"\nwrote the {TAG} section of {a.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
