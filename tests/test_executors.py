"""Executors as objects behind one interface, resolved by name through the registry."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from helpers import grads_of, make
from innerloop import registry
from innerloop.executors import Distributed, Executor, Loop, Threads, Vmap, resolve


def test_names_resolve_through_the_registry():
    assert {"distributed", "loop", "threads", "vmap"} <= set(registry.names("executor"))
    assert isinstance(resolve("loop", chunk=3), Loop)  # options an executor does not take are not its business
    v = resolve("vmap", chunk=3)
    assert isinstance(v, Vmap) and v.chunk == 3
    t = Threads()
    assert resolve(t) is t
    with pytest.raises(ValueError, match="unknown execution path 'nope'; expected one of .*loop.*vmap"):
        resolve("nope")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("executor", "loop")(Threads)


def test_a_users_executor_registered_after_import_is_usable_by_name():
    class Reversed(Loop):
        """The loop over the tasks in reverse order (same meta-gradient up to summation order)."""

        name = "reversed-test"

        def meta_backward(self, fn, state, batch, metas):
            rev = type(batch)(*(t.flip(0) for t in batch))
            return super().meta_backward(fn, state, rev, metas)

    registry.register("executor", "reversed-test")(Reversed)
    a, batch = make("meta_sgd", "maml", steps=2)
    a.meta_backward(batch, "reversed-test")
    b, _ = make("meta_sgd", "maml", steps=2)
    b.meta_backward(batch, Loop())
    ga, gb = grads_of(a), grads_of(b)
    for k in gb:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-12, atol=1e-14)


def test_path_strings_and_objects_give_the_same_bits():
    for name, obj in (("loop", Loop()), ("vmap", Vmap()), ("threads", Threads())):
        a, batch = make("lslr", "anil", steps=2)
        a.meta_backward(batch, name)
        b, _ = make("lslr", "anil", steps=2)
        b.meta_backward(batch, obj)
        assert all(torch.equal(x, y) for x, y in zip(grads_of(a).values(), grads_of(b).values(), strict=True))


def test_vmap_chunk_is_validated():
    with pytest.raises(ValueError, match="must be"):
        Vmap(chunk=0)
    assert isinstance(Vmap(), Executor)


def test_distributed_on_one_process_is_its_inner_executor_bit_for_bit():
    for inner in (Loop(), Vmap(chunk=2)):
        a, batch = make("meta_sgd", "maml", steps=2)
        sa = a.meta_backward(batch, Distributed(inner))
        ea = a.evaluate(batch, Distributed(inner))
        b, _ = make("meta_sgd", "maml", steps=2)
        sb = b.meta_backward(batch, inner)
        eb = b.evaluate(batch, inner)
        assert sa == sb
        assert all(torch.equal(x, y) for x, y in zip(grads_of(a).values(), grads_of(b).values(), strict=True))
        assert torch.equal(ea.loss, eb.loss) and torch.equal(ea.support_losses, eb.support_losses)


RANK = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from helpers import grads_of, make
from innerloop.experiments import distributed as d
from innerloop.executors import Distributed, Threads

d.init("cpu")
torch.set_num_threads(2)
algo, batch = make("meta_sgd", "maml", steps=2)
batch = type(batch)(*(torch.cat([t, t.flip(0)]) for t in batch))  # 6 tasks: 3 per rank
stats = algo.meta_backward(batch, Distributed(Threads()))
ev = algo.evaluate(type(batch)(*(t[:5] for t in batch)), Distributed("loop"))  # uneven shares
print(json.dumps({"stats": stats, "grads": {k: v.tolist() for k, v in grads_of(algo).items()},
                  "eval": ev.loss.tolist()}))
"""


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_distributed_two_ranks_match_one_process(tmp_path):
    from pathlib import Path

    from test_distributed import _launch

    tests = str(Path(__file__).resolve().parent)
    res = _launch(2, ["-c", RANK, tests], tmp_path / "logs")
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    out = [json.loads(r[1].strip().splitlines()[-1]) for r in res]
    algo, batch = make("meta_sgd", "maml", steps=2)
    batch = type(batch)(*(torch.cat([t, t.flip(0)]) for t in batch))
    stats = algo.meta_backward(batch, Loop())
    ev = algo.evaluate(type(batch)(*(t[:5] for t in batch)), Loop())
    for o in out:
        assert o["stats"]["loss"] == pytest.approx(stats["loss"], rel=1e-12)
        for k, g in grads_of(algo).items():
            torch.testing.assert_close(torch.tensor(o["grads"][k], dtype=g.dtype), g, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(torch.tensor(o["eval"], dtype=ev.loss.dtype), ev.loss, rtol=1e-12, atol=1e-14)


def test_threads_equals_the_single_threaded_loop_bit_for_bit():
    """float32, conv + batch norm: the threads executor runs each task with single-threaded kernels,
    so it is the loop with one intra-op thread, bit for bit (docs/performance.md, issue 15 item 7)."""
    from test_memory_controls import _conv_build

    def grads(executor, threads):
        algo, batch = _conv_build(steps=2)()
        algo = algo.float()
        batch = type(batch)(*(t.float() if t.is_floating_point() else t for t in batch))
        n = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            algo.meta_backward(batch, executor)
        finally:
            torch.set_num_threads(n)
        return grads_of(algo)

    a, b = grads(Loop(), 1), grads(Threads(), 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
