"""tools/inner_stability.py (MetaMiDA, MLPLR): closed forms on a quadratic loss; the traced loop is the library's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import torch

from innerloop.executors.grads import autograd_value_and_grad
from innerloop.experiments.build import build
from innerloop.experiments.config import load
from innerloop.experiments.train import train
from innerloop.types import Task
from run_helpers import tiny

TOOL = Path(__file__).resolve().parents[1] / "tools" / "inner_stability.py"
_spec = importlib.util.spec_from_file_location("inner_stability", TOOL)
inner_stability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inner_stability)


def _float64_task(cfg):
    """The config's algorithm in float64 and one of its tasks."""
    family, algo = build(cfg)
    algo.double()
    batch = family.sample(1, torch.Generator().manual_seed(3))
    return algo, Task(*(x[0].double() if x.is_floating_point() else x[0] for x in batch))


def _design(x):
    return torch.cat([x.reshape(-1, 1), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)


def _mse_grad(x, y, theta):
    return 2.0 / len(x) * x.T @ (x @ theta - y.reshape(-1))


def test_eigenvalue_and_growth_are_the_quadratics_closed_forms():
    cfg = tiny("model.hidden=[]", "algorithm.inner_steps=3")  # linear regression: the support loss is quadratic
    algo, task = _float64_task(cfg)
    sx, qx = _design(task.support_x), _design(task.query_x)
    hessian = 2.0 / len(sx) * sx.T @ sx  # of the mean squared error in (weight, bias)
    top = float(torch.linalg.eigvalsh(hessian).max())
    alpha = 1.5 / top  # past the point where α·λ_max = 1: the top direction flips sign each step
    forward, start = algo.prepare(algo.params(), task)[:2]
    wrt = list(start.values())
    loss = algo.loss_fn(forward(start, task.support_x), task.support_y)
    got = inner_stability.top_eigenvalue(torch.autograd.grad(loss, wrt, create_graph=True), wrt, 60,
                                         torch.Generator().manual_seed(0))
    assert abs(got - top) < 1e-9 * top

    r = inner_stability.trace_task(algo, task, alpha, 60, torch.Generator().manual_seed(0))
    assert [round(s, 9) for s in r["sharpness"]] == [1.5] * 3  # a quadratic: the same Hessian everywhere
    theta = torch.cat([v.detach().reshape(-1) for v in algo.params().values()])  # (weight, bias)
    for _ in range(3):
        theta = theta - alpha * _mse_grad(sx, task.support_y, theta)
    at_end = _mse_grad(qx, task.query_y, theta)
    u, step = at_end, torch.eye(2, dtype=torch.float64) - alpha * hessian
    for growth in reversed(r["growth"]):  # back through a step: the query gradient times I − αH
        before, u = u.norm(), step @ u
        assert abs(float(u.norm() / before) - growth) < 1e-9
    assert r["end"] == 1.0 and abs(r["total"] - float(u.norm() / at_end.norm())) < 1e-9


def test_a_fresh_mirror_map_measures_as_the_euclidean_geometry():
    euclid, task = _float64_task(tiny("algorithm.inner_steps=3"))
    mirror, _ = _float64_task(tiny("algorithm.inner_steps=3", "geometry.name=mirror"))
    mirror.model.load_state_dict(euclid.model.state_dict())  # the map starts as the identity
    a = inner_stability.trace_task(euclid, task, 0.1, 30, torch.Generator().manual_seed(0))
    b = inner_stability.trace_task(mirror, task, 0.1, 30, torch.Generator().manual_seed(0))
    for k in ("losses", "sharpness", "growth"):
        assert torch.allclose(torch.tensor(a[k]), torch.tensor(b[k]), rtol=1e-10, atol=0), k
    assert abs(b["end"] - 1.0) < 1e-12 and abs(a["total"] - b["total"]) < 1e-10


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_the_command_on_a_run_directory(tmp_path):
    train(tiny(), tmp_path / "run", progress=False)
    out = _tool(str(tmp_path / "run"), "--tasks", "3", "--per-task", "--iters", "5")
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"^task \d: query loss", out.stdout, re.M)) == 3
    steps = re.findall(r"^\s+(\d)\s+\S+\s+\S+\s+\d+ of 3\s", out.stdout, re.M)
    assert steps == [str(s + 1) for s in range(tiny().algorithm.inner_steps)]
    assert "at iteration 8 (last.pt)" in out.stdout
    nxt = _tool(str(tmp_path / "run"), "--next", "--iters", "5")
    assert nxt.returncode == 0 and "of 4 tasks" in nxt.stdout  # the tiny run's meta-batch
    best = _tool(str(tmp_path / "run"), str(tmp_path / "run" / "best.pt"), "--tasks", "2", "--iters", "5")
    assert best.returncode == 0 and "(best.pt)" in best.stdout, best.stderr
    refused = _tool(str(tmp_path / "run"), str(tmp_path / "run" / "best.pt"), "--next")
    assert refused.returncode != 0 and "--next needs a last.pt" in refused.stderr

    train(tiny("rule.name=meta_sgd"), tmp_path / "msgd", progress=False)
    refused = _tool(str(tmp_path / "msgd"))
    assert refused.returncode != 0 and "one scalar times the gradient" in refused.stderr


def test_the_traced_inner_loop_is_the_librarys_on_a_trained_looking_mirror_map():
    algo, task = _float64_task(tiny("algorithm.inner_steps=3", "geometry.name=mirror", "model.hidden=[8]"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the map away from the identity, every flow parameter
        for p in algo.geometry.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    _, res = algo.run_task(algo.params(), task, steps=3, first_order=False, value_and_grad=autograd_value_and_grad)
    r = inner_stability.trace_task(algo, task, algo.rule.lr, 5, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.tensor(r["losses"], dtype=torch.float64), res.support_losses, rtol=1e-12, atol=0)
    assert abs(r["end"] - 1.0) > 1e-3  # the map is no longer the identity


def test_mlplr_steps_take_each_tasks_own_lambda():
    """MLPLR: α is λ = lr_max − L_KD from the step's support forward; the traced inner loop is the library's."""
    cfg_args = ["task.name=images", "task.dataset=glyphs", "model.name=conv4", "model.channels=4",
                "algorithm.inner_steps=3"]
    cfg = load(None, [*cfg_args, 'rule={name = "mlplr", lr_max = 2.0, lr_min = 0.01}'])
    algo, task = _float64_task(cfg)
    _, res = algo.run_task(algo.params(), task, steps=3, first_order=False, value_and_grad=autograd_value_and_grad)
    r = inner_stability.trace_task(algo, task, inner_stability.step_size(cfg, algo), 5,
                                   torch.Generator().manual_seed(0))
    assert torch.allclose(torch.tensor(r["losses"], dtype=torch.float64), res.support_losses, rtol=1e-12, atol=0)
    assert torch.allclose(torch.tensor(r["alpha"], dtype=torch.float64), res.trace["lr"], rtol=1e-12, atol=0)
    assert len(set(r["alpha"])) == 3 and all(0.01 < a < 2.0 for a in r["alpha"])  # λ moves with the loss
    cfg = load(None, [*cfg_args, 'rule={name = "mlplr", lr_max = 2.0, lr_min = 0.01, detach = false}'])
    attached, _ = _float64_task(cfg)
    attached.load_state_dict(algo.state_dict())
    g = inner_stability.trace_task(attached, task, inner_stability.step_size(cfg, attached), 5,
                                   torch.Generator().manual_seed(0))
    assert g["losses"] == r["losses"] and g["alpha"] == r["alpha"]  # the same steps forward ...
    assert all(abs(x - y) > 1e-6 for x, y in zip(g["growth"], r["growth"], strict=True))  # ... and λ's derivative back
