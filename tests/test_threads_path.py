"""The ``threads`` execution path: the loop's per-task work on a thread pool, same numbers."""

from __future__ import annotations

import pytest
import torch

from helpers import grads_of, make
from innerloop.algorithms import ALGORITHMS
from innerloop.rules import RULES
from test_memory_controls import _conv_build


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers even where the test process was started with one thread
    yield
    torch.set_num_threads(n)


def _run(build, path, **attrs):
    algo, batch = build()
    for k, v in attrs.items():
        setattr(algo, k, v)
    algo.zero_grad()
    stats = algo.meta_backward(batch, path)
    return stats, grads_of(algo), algo.evaluate(batch, path), algo(batch, path).detach()


def _assert_same(a, b):
    (s1, g1, e1, l1), (s2, g2, e2, l2) = a, b
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-12) and s1["metric"] == pytest.approx(s2["metric"], rel=1e-12)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-10, atol=1e-12, msg=k)
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e1.metric, e2.metric, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e1.support_losses, e2.support_losses, rtol=1e-10, atol=1e-12)
    assert e1.trace.keys() == e2.trace.keys()
    for k in e1.trace:
        torch.testing.assert_close(e1.trace[k], e2.trace[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("algo_name", sorted(ALGORITHMS))
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_threads_equal_loop(rule_name, algo_name):
    build = lambda: make(rule_name, algo_name, "linear" if rule_name == "mlplr" else "sine", steps=2)
    _assert_same(_run(build, "loop"), _run(build, "threads"))


def test_threads_equal_loop_conv_batchnorm_with_controls():
    _assert_same(_run(_conv_build(), "loop"), _run(_conv_build(), "threads"))
    _assert_same(_run(_conv_build(), "loop", checkpoint=True, second_order_steps=2),
                 _run(_conv_build(), "threads", checkpoint=True, second_order_steps=2))


def test_threads_mirror_geometry():
    build = lambda: make("meta_sgd", "maml", "sine", steps=2, geometry_name="mirror")
    _assert_same(_run(build, "loop"), _run(build, "threads"))


def test_thread_setting_is_restored():
    algo, batch = make("sgd", "maml", "sine")
    algo.meta_backward(batch, "threads")
    assert torch.get_num_threads() == 2
