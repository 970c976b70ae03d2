"""Operators and seconds of one training meta-step of a config, on the loop path.

Counts every operator the profiler sees in ``algo.meta_backward`` (nested ones included) and times
the step without the profiler: a rule or geometry that issues many small operators shows up as a
high count against plain MAML's on the same config.

    python tools/step_profile.py configs/kfo_omniglot.toml task.dataset=glyphs model.depth=2 rule.name=kfc
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from innerloop.experiments.build import build
from innerloop.experiments.config import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=10, help="operators listed by self time")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load(a.config, a.overrides)
    family, algo = build(cfg)
    executor = algo.executor("loop")
    batch = family.sample(cfg.train.meta_batch, torch.Generator().manual_seed(0))

    def step() -> None:
        algo.zero_grad(set_to_none=True)
        algo.meta_backward(batch, executor)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        step()
    seconds = (time.perf_counter() - t0) / a.repeats
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{sum(e.count for e in events)} operators per meta-step; {seconds:.3f} s per meta-step "
          f"(mean of {a.repeats}, {a.threads} thread(s), meta-batch {cfg.train.meta_batch})")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: a.top]:
        print(f"  {e.self_cpu_time_total / total:6.1%}  {e.count:7d}  {e.key}")


if __name__ == "__main__":
    main()
