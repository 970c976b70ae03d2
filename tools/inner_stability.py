"""Issue 14 (MetaMiDA and MLPLR "why not"): is a run's inner loop inside its stable step size, task by task?

Gradient descent with step ``α`` on a loss whose Hessian has a largest eigenvalue ``λ`` contracts
along that direction only while ``α·λ < 2``; above it the step overshoots and the derivative of the
adapted weights with respect to the initial ones grows by ``|1 − α·λ|`` per step along it. For each
task and each inner step this prints:

* ``α·λ``: the step size times the largest-magnitude eigenvalue of the support loss's Hessian at
  that step's weights (power iteration on Hessian-vector products; a negative value is a negative
  eigenvalue);
* the growth of the query loss's gradient when it is back-propagated through that step (the norm
  of the gradient with respect to the step's input over that with respect to its output; about 1
  when the step neither shrinks nor stretches the directions the query loss cares about);
* the whole inner loop's ``|dq/dz0| / |dq/dφ_T|``: the query gradient with respect to the start over
  that with respect to the adapted weights, every adapted tensor together.

For a mirror geometry (MetaMiDA) a step is ``z ← z − α ∇φ L(g(z))`` in the dual variable ``z``, the
Hessian is the support loss's with respect to the weights ``φ = g(z)``, and the growth includes the
map's Jacobian (the "end map" factor is ``|dq/dz_T| / |dq/dφ_T|``). Rules whose step is one scalar
times the gradient: plain SGD (``α`` = its lr) and MLPLR (``α`` = the step's λ, from the support
forward, so ``α·λ`` uses each task's and step's own λ; with ``detach=false`` the growth includes λ's
own derivative). Computed in float64, the model in training mode as in meta-training.

    .venv/bin/python tools/inner_stability.py RUN_DIR [CHECKPOINT.pt] [--tasks 50 | --next] \
        [--iters 20] [--per-task]

Default checkpoint: RUN_DIR/last.pt (best.pt without it). ``--tasks N``: the run's first N
validation tasks; ``--next``: the meta-batch the checkpoint's sampler draws next (the tasks of the
next meta-step of training). Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from innerloop.experiments.build import build
from innerloop.experiments.checkpoint import CheckpointError, load_checkpoint
from innerloop.experiments.config import validate
from innerloop.experiments.run import read_run_config
from innerloop.types import Task


def _dot(xs, ys) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=True))


def _norm(xs) -> float:
    return float(torch.nn.utils.get_total_norm(xs))


def top_eigenvalue(grads, wrt, iters: int, gen: torch.Generator) -> float:
    """The largest-magnitude eigenvalue of a loss's Hessian with respect to ``wrt`` (power iteration),
    from ``grads``, the loss's gradients with respect to ``wrt`` built with ``create_graph=True``."""
    v = [torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) for x in wrt]
    n = _norm(v)
    v = [x / n for x in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(_dot(grads, v), wrt, retain_graph=True)
        lam = float(_dot(hv, v))  # Rayleigh quotient: the eigenvalue's sign is kept
        n = _norm(hv)
        if n == 0.0:
            return 0.0
        v = [x / n for x in hv]
    return lam


SCALAR_STEP_RULES = ("sgd", "mlplr")  # a step that is one scalar times the gradient


def step_size(cfg, algo) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | float]:
    """The step's scalar ``α`` from the support forward ``(logits, targets, loss)``; ValueError for other rules."""
    if cfg.rule.name == "sgd":
        return lambda logits, targets, loss: cfg.rule.lr
    if cfg.rule.name == "mlplr":
        return lambda logits, targets, loss: algo.rule.learning_rate(logits, targets, loss)[0]
    raise ValueError(f"rule {cfg.rule.name!r}: not one of {SCALAR_STEP_RULES}")


def trace_task(algo, task: Task, alpha, iters: int, gen: torch.Generator) -> dict:
    """One task's inner loop (``algo.inner_steps`` steps of ``z ← z − α ∇φ L(g(z))``), measured. ``alpha``:
    a number, or a function of the support forward as :func:`step_size` returns."""
    size = alpha if callable(alpha) else (lambda logits, targets, loss: alpha)
    geo = algo.geometry
    forward, start, sx, qx = algo.prepare(algo.params(), task)
    names = list(start)

    # each step starts from a detached leaf, so the query gradient can be carried back one step at a time
    z = {n: v.detach().requires_grad_() for n, v in start.items()}
    steps, losses, sizes, sharpness = [], [], [], []
    for _ in range(algo.inner_steps):
        phi = geo.params(z)
        logits = forward(phi, sx)
        loss = algo.loss_fn(logits, task.support_y)
        at = [phi[n] for n in names]
        grads = torch.autograd.grad(loss, at, create_graph=True)  # the step's, and the Hessian's source
        a = size(logits, task.support_y, loss)
        a_value = float(a.detach()) if torch.is_tensor(a) else float(a)
        losses.append(float(loss.detach()))
        sizes.append(a_value)
        sharpness.append(a_value * top_eigenvalue(grads, at, iters, gen))
        out = geo.step(z, {n: -a * g for n, g in zip(names, grads, strict=True)})
        steps.append((z, out))
        z = {n: v.detach().requires_grad_() for n, v in out.items()}
    phi = geo.params(z)
    query = algo.loss_fn(forward(phi, qx), task.query_y)
    at_phi = torch.autograd.grad(query, [phi[n] for n in names], retain_graph=True)
    u = torch.autograd.grad(query, [z[n] for n in names])
    end, growth, previous = _norm(u) / _norm(at_phi), [], _norm(u)
    for into, out in reversed(steps):
        u = torch.autograd.grad([out[n] for n in names], [into[n] for n in names], u, retain_graph=True)
        growth.append(_norm(u) / previous)
        previous = _norm(u)
    return {"query": float(query.detach()), "losses": losses, "alpha": sizes, "sharpness": sharpness,
            "growth": growth[::-1], "end": end, "total": previous / _norm(at_phi)}


def summary(rows: list[dict]) -> list[str]:
    lines = ["step  median α  median α·λ  tasks α·λ > 2  median growth  largest growth"]
    for s in range(len(rows[0]["sharpness"])):
        sharp = [r["sharpness"][s] for r in rows]
        grow = [r["growth"][s] for r in rows]
        lines.append(f"{s + 1:>4}  {statistics.median(r['alpha'][s] for r in rows):>8.3g}"
                     f"  {statistics.median(sharp):>10.2f}  {sum(x > 2 for x in sharp):>6} of {len(rows):<5}"
                     f"  {statistics.median(grow):>13.2f}  {max(grow):>14.2f}")
    total = [r["total"] for r in rows]
    lines.append(f"|dq/dz0| / |dq/dφ_T|: median {statistics.median(total):.2f}, largest {max(total):.1f}, "
                 f"above 10 on {sum(x > 10 for x in total)} of {len(rows)} tasks")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("checkpoint", nargs="?", type=Path, help="a checkpoint of this run (default: last.pt, else best.pt)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tasks", type=int, default=50, help="the run's first N validation tasks (default 50)")
    which.add_argument("--next", action="store_true", help="the meta-batch the checkpoint's sampler draws next")
    p.add_argument("--iters", type=int, default=20, help="power iterations per eigenvalue")
    p.add_argument("--per-task", action="store_true", help="print every task's inner loop")
    a = p.parse_args()
    cfg = validate(read_run_config(a.run_dir))
    if cfg.rule.name not in SCALAR_STEP_RULES:
        raise SystemExit(f"{a.run_dir}: rule {cfg.rule.name!r}; this measurement needs a step that is one scalar "
                         f"times the gradient (rule sgd or mlplr)")
    f = a.checkpoint or (a.run_dir / "last.pt" if (a.run_dir / "last.pt").exists() else a.run_dir / "best.pt")
    try:  # last.pt holds what best.pt does, and the sampler's state --next needs
        state = load_checkpoint(f, "last" if a.next else "best")
    except CheckpointError as e:
        raise SystemExit(f"{e}{' (--next needs a last.pt)' if a.next else ''}") from None
    family, algo = build(cfg)
    algo.load_state_dict(state["algorithm"])
    if a.next:
        gen = torch.Generator()
        gen.set_state(state["generator"])
        batch = family.sample(cfg.train.meta_batch, gen)
    else:
        batch = family.for_split("val").fixed_tasks(a.tasks, cfg.train.val_seed)
    algo.double()
    device = next(algo.parameters()).device
    alpha = step_size(cfg, algo)
    shown = (f"α = {cfg.rule.lr}" if cfg.rule.name == "sgd"
             else f"α = MLPLR's λ (lr_max {cfg.rule.lr_max}, lr_min {cfg.rule.lr_min})")
    print(f"{a.run_dir} at iteration {state['iteration']} ({f.name}), geometry {cfg.geometry.name}, {shown}, "
          f"{'the next meta-batch' if a.next else 'validation tasks'}")
    power = torch.Generator().manual_seed(0)
    rows = []
    for i in range(batch.support_x.shape[0]):
        task = Task(*((x[i].double() if x.is_floating_point() else x[i]).to(device) for x in batch))
        r = trace_task(algo, task, alpha, a.iters, power)
        rows.append(r)
        if a.per_task:
            print(f"task {i}: query loss {r['query']:.3f}; support loss per step "
                  + " ".join(f"{v:.3g}" for v in r["losses"]))
            print("   α per step        " + " ".join(f"{v:.3g}" for v in r["alpha"]))
            print("   α·λ per step      " + " ".join(f"{v:.2f}" for v in r["sharpness"]))
            print("   growth per step   " + " ".join(f"{v:.2f}" for v in r["growth"])
                  + f"   (end map {r['end']:.2f}; |dq/dz0| / |dq/dφ_T| {r['total']:.1f})")
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
