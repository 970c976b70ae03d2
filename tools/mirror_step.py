"""Issue 14 (MetaMiDA "why not"): what a MetaMiDA run's learned inverse mirror map ``g`` does to the
inner loop, at one or more of the run's checkpoints, on its first validation tasks.

For each task: the support loss at the adapted start ``φ0 = g(z0)``; after one mirror step
``g(z0 − α ∇φ L)`` and, for comparison, after one Euclidean step ``φ0 − α ∇φ L`` from the same
start; then, per block of the map, how long the mirror step ``Δφ`` is against the Euclidean one
(``|Δφ| / |α ∇φ L|``: 1 when the map leaves the step's scale alone) and how much of it comes from
the other blocks' dual variables (``|Δφ − Δφ_own| / |Δφ_own|``, ``Δφ_own`` the change when only
the block's own ``z`` moves: 0 when the map does not couple the blocks). Means over the tasks.

    .venv/bin/python tools/mirror_step.py RUN_DIR [CHECKPOINT.pt ...] [--tasks 40]

Without checkpoint files it reads RUN_DIR/best.pt. Nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from innerloop.experiments.checkpoint import load_checkpoint
from innerloop.experiments.train import load_run
from innerloop.types import Task


def first_step(algo, task: Task, alpha: float) -> dict:
    geo = algo.geometry
    forward, z0, sx, _ = algo.prepare(algo.params(), task)
    z0 = {k: v.detach() for k, v in z0.items()}
    with torch.no_grad():
        phi0 = geo(z0)
    start = {k: v.clone().requires_grad_() for k, v in phi0.items()}
    loss0 = algo.loss_fn(forward(start, sx), task.support_y)
    grad = dict(zip(start, torch.autograd.grad(loss0, list(start.values())), strict=True))
    with torch.no_grad():
        z1 = {k: z0[k] - alpha * grad[k] for k in z0}
        phi1 = geo(z1)
        euclid = {k: phi0[k] - alpha * grad[k] for k in z0}
        ratio, coupling = [], []
        for names in geo.blocks:
            own = geo({**z0, **{k: z1[k] for k in names}})
            d = torch.cat([(phi1[k] - phi0[k]).flatten() for k in names])
            d_own = torch.cat([(own[k] - phi0[k]).flatten() for k in names])
            e = torch.cat([(alpha * grad[k]).flatten() for k in names])
            ratio.append((d.norm() / e.norm()).item())
            coupling.append(((d - d_own).norm() / d_own.norm()).item())
        return {"start": loss0.item(),
                "mirror": algo.loss_fn(forward(phi1, sx), task.support_y).item(),
                "euclid": algo.loss_fn(forward(euclid, sx), task.support_y).item(),
                "ratio": ratio, "coupling": coupling}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint files of this run (default: its best.pt)")
    p.add_argument("--tasks", type=int, default=40, help="validation tasks to average over")
    a = p.parse_args()
    cfg, family, algo, _, _, _ = load_run(a.run_dir, "best")
    if cfg.geometry.name != "mirror":
        raise SystemExit(f"{a.run_dir} is not a MetaMiDA run (geometry {cfg.geometry.name})")
    batch = family.for_split("val").fixed_tasks(a.tasks, cfg.train.val_seed)
    for f in a.checkpoints or [a.run_dir / "best.pt"]:
        state = load_checkpoint(f, "best")  # last.pt holds what best.pt does, and more
        algo.load_state_dict(state["algorithm"])
        rows = [first_step(algo, Task(*(t[i] for t in batch)), cfg.rule.lr) for i in range(a.tasks)]
        m = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64).mean(0) for k in rows[0]}
        print(f"iteration {state['iteration']}: support loss at g(z0) {m['start']:.2f}, after one mirror step "
              f"{m['mirror']:.2f}, after one Euclidean step from g(z0) {m['euclid']:.2f}")
        print("  per block, |mirror step| / |Euclidean step|: " + " ".join(f"{v:.3f}" for v in m["ratio"].tolist()))
        print("  per block, share from the other blocks:      " + " ".join(f"{v:.3f}" for v in m["coupling"].tolist()))


if __name__ == "__main__":
    main()
