"""The command: parse the options, run each (library, row, meta-batch) in its own process (so its
peak RSS is its own), compare the meta-gradients with the reference's and print / write the tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from innerloop.bench.child import run_child
from innerloop.bench.device import refuse_unavailable
from innerloop.bench.peers.case import ROWS, Config
from innerloop.bench.peers.compare import title
from innerloop.bench.peers.libraries import (
    GRAD_REFERENCE,
    PEERS,
    REFERENCE,
    column_title,
    expand_libraries,
    installed,
    library_version,
)
from innerloop.bench.peers.measure import grad_diff, run_case
from innerloop.bench.peers.ours import ours_path_problem
from innerloop.bench.peers.table import case_line, markdown, summary, write_section
from innerloop.experiments.checkpoint import save_text

DESCRIPTION = "Peers benchmark: MAML meta-steps of learn2learn, higher and TorchOpt next to ours."


def _child(lib: str, cfg: Config, a: argparse.Namespace, grad_out: str) -> dict:
    cmd = [sys.executable, "-m", "innerloop.bench.peers", "--case", lib, cfg.row, str(cfg.meta_batch),
           "--grad-out", grad_out, "--steps", str(cfg.steps), "--lr", repr(cfg.lr), "--channels", str(cfg.channels),
           "--dtype", cfg.dtype, "--device", cfg.device,
           "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    out = run_child(cmd)
    if isinstance(out, str):
        base = {"library": lib, "row": cfg.row, "meta_batch": cfg.meta_batch, "version": library_version(lib)}
        return {**base, "status": "failed", "note": out[:200]}
    return out


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_start": os.getloadavg()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m innerloop.bench.peers", description=DESCRIPTION)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--libraries", nargs="+", default=[*PEERS, REFERENCE, "ours"],
                   help=f"any of {', '.join(PEERS)}, {REFERENCE}, ours (every path in OUR_PATHS) or ours:PATH "
                        "(a registered executor)")
    p.add_argument("--meta-batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--repeats", type=int, default=5, help="timed meta-steps per case")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed meta-steps before them (at least 1: the first records the meta-gradient)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each case's process")
    p.add_argument("--steps", type=int, default=5, help="inner SGD steps")
    p.add_argument("--lr", type=float, default=0.4, help="inner learning rate (Meta-SGD: its initial value)")
    p.add_argument("--channels", type=int, default=64, help="filters per conv layer")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="of weights and data; float64 tells float32 rounding from real gradient differences")
    p.add_argument("--device", default="cpu",
                   help="where every case runs (cpu, cuda, cuda:1, ...); on CUDA the memory column is "
                        "torch.cuda.max_memory_allocated instead of the process's peak RSS")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--markdown", help="rewrite the peers section (between the markers) of this Markdown file")
    p.add_argument("--case", nargs=3, metavar=("LIB", "ROW", "META_BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--grad-out", help=argparse.SUPPRESS)
    return p


def _measure_all(a: argparse.Namespace, libs: list[str]) -> list[dict]:
    """Every case in its own process, the gradient reference first in each (row, meta-batch), so each
    line can be printed with its gradient difference as soon as it is measured."""
    path_problems = {lib: ours_path_problem(lib.split(":", 1)[1]) for lib in libs if lib.startswith("ours:")}
    results: list[dict] = []
    order = sorted(libs, key=lambda lib: lib != GRAD_REFERENCE)
    width = max(len(column_title(lib)) for lib in libs) + len(" (threads)")
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for mb in a.meta_batch:
            for row in a.rows:
                cfg = Config(row=row, meta_batch=mb, steps=a.steps, lr=a.lr, channels=a.channels, dtype=a.dtype,
                             device=a.device)
                print(f"\n{ROWS[row].label}, meta-batch {mb}", flush=True)
                case: dict[str, dict] = {}
                ref = None
                # every library's distance from the exact answer, not from one another: the same weights
                # and tasks cast to float64, one untimed step of the hand-written loop in its own process
                ref64_path = os.path.join(tmp, f"{row}-{mb}-ref64.pt")
                once = argparse.Namespace(repeats=0, warmup=1, threads=a.threads)
                ok64 = _child(REFERENCE, replace(cfg, dtype="float64"), once, ref64_path)["status"] == "ok"
                ref64 = torch.load(ref64_path) if ok64 else None
                if GRAD_REFERENCE not in libs:  # not timed: one untimed step for its meta-gradient
                    ref_path = os.path.join(tmp, f"{row}-{mb}-ref.pt")
                    one = argparse.Namespace(repeats=0, warmup=1, threads=a.threads)
                    if _child(GRAD_REFERENCE, cfg, one, ref_path)["status"] == "ok":
                        ref = torch.load(ref_path)
                for lib in order:
                    gpath = os.path.join(tmp, f"{row}-{mb}-{lib.replace(':', '_')}.pt")
                    blank = {"library": lib, "row": row, "meta_batch": mb, "version": ""}
                    if not installed(lib):
                        r = {**blank, "status": "not installed", "note": ""}
                    elif lib.startswith("ours:") and (why := path_problems[lib]):
                        r = {**blank, "status": "n/a", "note": why}
                    else:
                        r = _child(lib, cfg, a, gpath)
                    if r["status"] == "ok":
                        grads = torch.load(gpath)
                        if lib == GRAD_REFERENCE:
                            ref = grads
                        if ref is not None:
                            r["grad_diff"], r["grad_rel"] = grad_diff(grads, ref)
                        if ref64 is not None:
                            r["grad_rel64"] = grad_diff(grads, ref64)[1]
                    case[lib] = r
                    print(f"  {title(lib, [r]):<{width}}  {case_line(r)}", flush=True)
                results += [case[lib] for lib in libs]
    return results


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.case:  # internal: one case in this process, JSON on the last line of stdout
        lib, row, mb = a.case
        cfg = Config(row=row, meta_batch=int(mb), steps=a.steps, lr=a.lr, channels=a.channels, dtype=a.dtype,
                     device=a.device)
        res = run_case(lib, cfg, repeats=a.repeats, warmup=a.warmup, threads=a.threads, grad_out=a.grad_out)
        res.pop("grads", None)
        print(json.dumps(res))
        return 0

    if refuse_unavailable(a.device):
        return 2
    libs = expand_libraries(a.libraries)
    info = {**machine_info(a.threads), "repeats": a.repeats, "warmup": max(a.warmup, 1), "device": a.device}
    print(f"{info['cpu']}, device {a.device}, torch {info['torch']}, {a.threads} threads per case, "
          f"load average {'/'.join(f'{x:.2f}' for x in info['load_start'])}")
    results = _measure_all(a, libs)
    info["load_end"] = os.getloadavg()

    print()
    print(summary(results, libs, a.rows, a.meta_batch))
    if a.json:
        save_text(json.dumps({"machine": info, "results": results}, indent=2), a.json)
    if a.markdown:
        command = "python -m innerloop.bench.peers " + shlex.join(argv if argv is not None else sys.argv[1:])
        write_section(a.markdown, markdown(results, info, libs, command))
        print(f"\nwrote the peers section of {a.markdown}")
    return 0
