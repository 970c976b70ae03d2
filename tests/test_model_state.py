"""Model state in every executor (issue 15 item 2, issue 17 item 1), in float64.

A user's model with torch's own ``BatchNorm2d(track_running_stats=True)``, a registered buffer, a
frozen layer (``requires_grad=False``) and ``Dropout(p=0)``: the loop, threads and vmap executors
give the same meta-gradients (MAML and ANIL, first and second order), equal to central finite
differences; running statistics are never updated; evaluation runs in eval mode; second order
through a native norm kernel under vmap is refused by name, and :func:`exact_norms` fixes it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerloop import ANIL, MAML, SGD
from innerloop.executors import Loop, Threads, Vmap
from innerloop.executors.grads import autograd_value_and_grad
from innerloop.models import exact_norms
from innerloop.types import Task

DT = torch.float64
EXECUTORS = {"loop": Loop(), "threads": Threads(), "vmap": Vmap()}


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers for the threads executor
    yield
    torch.set_num_threads(n)


class Masked(nn.Module):
    """Multiplies by a fixed mask held in a registered buffer."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mask", (torch.arange(n) % 3 != 0).to(DT))

    def forward(self, x):
        return x * self.mask


class Probe(nn.Module):
    """Records the mode it was called in (a Python side effect, fine under vmap)."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


class UserNet(nn.Module):
    def __init__(self, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        c, hw = 3, 6
        norm_layer = nn.BatchNorm2d(c, track_running_stats=True) if norm == "batch" else nn.LayerNorm([c, hw, hw])
        frozen = nn.Linear(c * hw * hw, 8)
        frozen.requires_grad_(False)
        self.probe = Probe()
        self.body = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), norm_layer, nn.ReLU(), nn.Dropout(dropout),
                                  nn.Flatten(), Masked(c * hw * hw), frozen, nn.Tanh(), self.probe)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def _accuracy(out, y):
    return (out.argmax(-1) == y).to(out.dtype).mean()


def _batch(seed: int = 1, tasks: int = 3) -> Task:
    g = torch.Generator().manual_seed(seed)
    n = 3
    return Task(torch.randn(tasks, 2 * n, 1, 6, 6, generator=g, dtype=DT), torch.arange(n).repeat(2).expand(tasks, -1),
                torch.randn(tasks, 3 * n, 1, 6, 6, generator=g, dtype=DT), torch.arange(n).repeat(3).expand(tasks, -1))


def _algo(algo="maml", first_order=False, exact=True, norm="batch", dropout=0.0, seed=0, **kw):
    torch.manual_seed(seed)
    model = UserNet(norm, dropout).to(DT)
    with torch.no_grad():  # running statistics that differ from a fresh layer's, so using them would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
                m.running_var.fill_(2.0)
    if exact:
        exact_norms(model)
    cls = {"maml": MAML, "anil": ANIL}[algo]
    return cls(model, SGD(0.3), loss_fn=F.cross_entropy, metric_fn=_accuracy, inner_steps=2,
               first_order=first_order, **kw).to(DT)


def _grads(algo):
    return {n: p.grad.clone() for n, p in algo.named_parameters() if p.grad is not None}


def _run(executor, **kw):
    algo = _algo(**kw)
    stats = algo.meta_backward(_batch(), EXECUTORS[executor])
    return algo, stats, _grads(algo)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("algo", ["maml", "anil"])
def test_executors_agree_on_a_user_model_with_state(algo, first_order):
    ref_algo, ref_stats, ref = _run("loop", algo=algo, first_order=first_order)
    assert "model.body.6.weight" not in ref  # the frozen layer: not meta-learned
    assert ref and all(v.abs().sum() > 0 for v in ref.values())
    for name in ("threads", "vmap"):
        _, stats, g = _run(name, algo=algo, first_order=first_order)
        assert stats["loss"] == pytest.approx(ref_stats["loss"], rel=1e-12), name
        assert g.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(g[k], ref[k], rtol=1e-10, atol=1e-12, msg=f"{name} {k}")


def test_frozen_parameters_are_not_adapted():
    algo = _algo()
    assert "model.body.6.weight" not in [f"model.{n}" for n in algo.adapted]
    assert "body.6.weight" not in algo.adapted and "body.0.weight" in algo.adapted
    assert "body.6.weight" not in ANIL.adapted_names(algo.model) + algo.adapted


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_running_statistics_are_never_updated(executor):
    algo = _algo(norm_stats="running")
    before = {k: v.clone() for k, v in algo.model.state_dict().items() if "running" in k or "num_batches" in k}
    algo.meta_backward(_batch(), EXECUTORS[executor])
    algo.evaluate(_batch(), EXECUTORS[executor])
    algo(_batch(), EXECUTORS[executor])
    after = algo.model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def _finite_difference(algo, batch, direction, eps=1e-5):
    """Central difference of the mean query loss along ``direction`` (a dict over meta-parameters)."""
    named = dict(algo.named_parameters())
    vals = []
    for s in (1, -1):
        with torch.no_grad():
            for k, d in direction.items():
                named[k].add_(s * eps * d)
        vals.append(algo(batch, Loop()).mean().item())
        with torch.no_grad():
            for k, d in direction.items():
                named[k].sub_(s * eps * d)
    return (vals[0] - vals[1]) / (2 * eps)


@pytest.mark.parametrize("executor", ["loop", "vmap"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_second_order_meta_gradient_matches_finite_differences(norm, executor):
    algo = _algo(norm=norm)
    batch = _batch()
    algo.meta_backward(batch, EXECUTORS[executor])
    g = torch.Generator().manual_seed(7)
    direction = {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in algo.named_parameters() if p.requires_grad}
    analytic = sum((p.grad * direction[n]).sum() for n, p in algo.named_parameters() if p.requires_grad).item()
    assert analytic == pytest.approx(_finite_difference(algo, batch, direction), rel=1e-6)


@pytest.mark.parametrize("norm,cls", [("batch", "BatchNorm2d"), ("layer", "LayerNorm")])
def test_vmap_refuses_second_order_through_native_norms(norm, cls):
    algo = _algo(norm=norm, exact=False)
    with pytest.raises(ValueError, match=rf"has body\.1 \({cls}\).*exact_norms"):
        algo.meta_backward(_batch(), "vmap")
    # first order, ANIL (the norm is outside the twice-differentiated head) and the loop are fine
    _algo(norm=norm, exact=False, first_order=True).meta_backward(_batch(), "vmap")
    _algo(norm=norm, exact=False, second_order_steps=0).meta_backward(_batch(), "vmap")
    _algo(algo="anil", norm=norm, exact=False).meta_backward(_batch(), "vmap")
    _algo(norm=norm, exact=False).meta_backward(_batch(), "loop")


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_exact_norms_computes_what_the_native_module_computes(norm):
    native, exact = _algo(norm=norm, exact=False).model, _algo(norm=norm).model
    assert type(exact.body[1]).__name__.startswith("Exact") and isinstance(exact.body[1], type(native.body[1]))
    assert native.state_dict().keys() == exact.state_dict().keys()
    x = _batch().support_x[0]
    for mode in (True, False):
        native.train(mode)
        exact.train(mode)
        torch.testing.assert_close(exact(x), native(x), rtol=1e-12, atol=1e-12)
    native_loop, exact_loop = _run("loop", exact=False)[2], _run("loop")[2]
    for k in native_loop:
        torch.testing.assert_close(exact_loop[k], native_loop[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(executor):
    algo = _algo()
    algo.meta_backward(_batch(), EXECUTORS[executor])
    # the threads executor calls private copies of the model; the loop and vmap the model itself
    if executor != "threads":
        assert algo.model.probe.seen and all(algo.model.probe.seen)
        algo.model.probe.seen.clear()
    algo.evaluate(_batch(), EXECUTORS[executor])
    if executor != "threads":
        assert algo.model.probe.seen and not any(algo.model.probe.seen)
    assert algo.model.training and all(m.training for m in algo.model.modules())


def test_evaluation_norm_statistics_are_a_setting():
    batch = _batch()
    out = {s: _algo(norm_stats=s).evaluate(batch, Loop()) for s in ("batch", "running")}
    assert not torch.allclose(out["batch"].loss, out["running"].loss)
    for name in ("threads", "vmap"):
        e = _algo(norm_stats="running").evaluate(batch, EXECUTORS[name])
        torch.testing.assert_close(e.loss, out["running"].loss, rtol=1e-10, atol=1e-12)
    # "batch" is the papers' transductive protocol: the same numbers as in training mode
    algo = _algo()
    params = {k: v.detach() for k, v in algo.params().items()}
    manual = torch.stack([
        algo.loss_fn(algo.run_task(params, batch.index(i), steps=2, first_order=True,
                                   value_and_grad=autograd_value_and_grad)[0], batch.query_y[i])
        for i in range(batch.num_tasks)])
    torch.testing.assert_close(out["batch"].loss, manual.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="norm_stats"):
        _algo(norm_stats="both")


@pytest.mark.parametrize("executor", ["loop", "threads", "vmap"])
def test_dropout_draws_differently_for_each_task(executor):
    algo = _algo(dropout=0.5)
    one = _batch(tasks=1)
    same = Task(*(t.expand(4, *t.shape[1:]) for t in one))  # four copies of one task
    losses = algo(same, EXECUTORS[executor]).detach()
    assert len(set(losses.tolist())) > 1
    algo.meta_backward(same, EXECUTORS[executor])  # and the meta-gradient runs (vmap: randomness="different")
    ev = algo.evaluate(same, EXECUTORS[executor])  # eval mode: Dropout off, identical tasks score the same
    assert len(set(ev.loss.tolist())) == 1


class _UncheckedVmap(Vmap):
    exact_native_norms = True  # pretend, to see what the refusal protects against


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_the_refused_case_is_really_wrong_in_this_torch(norm):
    """If this fails after a torch upgrade, the bug is fixed: drop ``Vmap.exact_native_norms = False``."""
    algo, batch = _algo(norm=norm, exact=False), _batch()
    algo.meta_backward(batch, _UncheckedVmap())
    native = _grads(algo)
    exact = _run("loop", norm=norm, exact=False)[2]
    worst = max(((native[k] - exact[k]).norm() / exact[k].norm()).item() for k in exact)
    assert worst > 1e-6


class _Tied(nn.Module):
    def __init__(self, share_module: bool):
        super().__init__()
        self.a = nn.Linear(4, 4)
        if share_module:
            self.b = self.a  # the same module under two names
        else:
            self.b = nn.Linear(4, 4)
            self.b.weight, self.b.bias = self.a.weight, self.a.bias  # tied parameters
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _tied_algo():
    torch.manual_seed(0)
    return MAML(_Tied(False).to(DT), SGD(0.1), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=2)


def test_shared_modules_are_refused_and_tied_parameters_work():
    with pytest.raises(ValueError, match=r"module 'b' is the same object as 'a'.*model\.b\.weight = model\.a\.weight"):
        MAML(_Tied(True), SGD(0.1), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=2)
    g = torch.Generator().manual_seed(1)
    batch = Task(torch.randn(3, 5, 4, generator=g, dtype=DT), torch.randn(3, 5, 1, generator=g, dtype=DT),
                 torch.randn(3, 6, 4, generator=g, dtype=DT), torch.randn(3, 6, 1, generator=g, dtype=DT))
    ref_algo = _tied_algo()
    ref_algo.meta_backward(batch, Loop())
    ref = _grads(ref_algo)
    assert set(ref) == {"model.a.weight", "model.a.bias", "model.head.weight", "model.head.bias"}
    for name in ("threads", "vmap"):
        algo = _tied_algo()
        algo.meta_backward(batch, EXECUTORS[name])
        assert all(p.is_leaf for p in algo.parameters())
        got = _grads(algo)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12, msg=f"{name} {k}")
    direction = {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in ref_algo.named_parameters()}
    analytic = sum((ref[n] * d).sum() for n, d in direction.items()).item()
    assert analytic == pytest.approx(_finite_difference(ref_algo, batch, direction), rel=1e-6)


def test_norm_stats_is_a_config_setting():
    from innerloop.experiments.build import build
    from innerloop.experiments.config import ConfigError, load

    assert build(load(None, []))[1].norm_stats == "batch"
    assert build(load(None, ['algorithm.norm_stats="running"']))[1].norm_stats == "running"
    with pytest.raises(ConfigError, match="algorithm.norm_stats"):
        load(None, ['algorithm.norm_stats="both"'])
