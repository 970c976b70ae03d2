"""ANIL on any model: the head named (or found), the user's forward kept, a wrong name refused at construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import DT
from innerloop import ANIL, SGD
from innerloop.algorithms import autograd_value_and_grad
from innerloop.data import Sine
from innerloop.models import MLP


class TwoHeads(nn.Module):
    """A user's model: names of its own, and a forward that is not classifier(features(x))."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(1, 8), nn.Tanh())
        self.classifier = nn.Linear(8, 1)
        self.aux = nn.Linear(1, 1)

    def forward(self, x):
        return self.classifier(self.features(x)) + 0.5 * self.aux(x)


def _anil(model, **kw):
    return ANIL(model.to(DT), SGD(0.1), loss_fn=F.mse_loss, metric_fn=F.mse_loss, inner_steps=2, **kw)


def _batch():
    t = Sine(k_shot=5, query=7).sample(3, torch.Generator().manual_seed(0))
    return type(t)(*(x.to(DT) for x in t))


def test_the_named_head_adapts_through_the_users_own_forward():
    torch.manual_seed(0)
    model = TwoHeads()
    algo = _anil(model, head="classifier")
    assert algo.adapted == ["classifier.weight", "classifier.bias"]
    task = _batch().index(0)
    params = {n: p for n, p in model.named_parameters()}
    w = {n: params[n] for n in algo.adapted}
    for _ in range(2):  # the user's forward, classifier adapted, the rest fixed
        loss = F.mse_loss(torch.func.functional_call(model, {**params, **w}, (task.support_x,)), task.support_y)
        g = torch.autograd.grad(loss, list(w.values()), create_graph=True)
        w = {n: v - 0.1 * gi for (n, v), gi in zip(w.items(), g, strict=True)}
    _, res = algo.run_task(algo.params(), task, steps=2, first_order=False,
                           value_and_grad=autograd_value_and_grad)
    for n in w:
        torch.testing.assert_close(res.params[n], w[n], rtol=1e-12, atol=1e-14)
    algo.meta_backward(_batch())
    assert model.features[0].weight.grad is not None and model.aux.weight.grad is not None  # meta-learned


def test_default_head_is_the_last_linear_and_a_wrong_name_is_refused():
    assert _anil(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))).adapted == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="no submodule 'classifer'.*classifier"):
        _anil(TwoHeads(), head="classifer")
    with pytest.raises(ValueError, match="no parameters"):
        _anil(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)), head="1")


def test_feature_split_fast_path_equals_the_full_forward():
    torch.manual_seed(1)
    fast = MLP(1, [8, 8], 1)
    slow = MLP(1, [8, 8], 1)
    slow.load_state_dict(fast.state_dict())
    slow.feature_split = ()  # the same model, run through its forward at every step
    batch = _batch()
    grads = []
    for m in (fast, slow):
        algo = _anil(m)
        algo.meta_backward(batch)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-12, atol=1e-14)


def test_head_in_a_config():
    from innerloop.experiments.build import build
    from innerloop.experiments.config import ConfigError, load

    _, algo = build(load(None, ["algorithm.name=anil", "algorithm.head=body.2"]))
    assert algo.adapted == ["body.2.weight", "body.2.bias"]
    with pytest.raises(ConfigError, match="algorithm.head"):
        build(load(None, ["algorithm.name=maml", "algorithm.head=head"]))
