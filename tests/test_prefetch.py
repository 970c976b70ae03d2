"""The prefetching thread hands out the same batches, in the same order, as sampling in place."""

from __future__ import annotations

import pytest
import torch

from innerloop.data import Sine
from innerloop.data.prefetch import Prefetcher


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_and_resumable_state(depth):
    fam = Sine(5, 7)
    ref_gen = torch.Generator().manual_seed(3)
    ref = [fam.sample(4, ref_gen) for _ in range(6)]
    feed = Prefetcher(fam.sample, 4, torch.Generator().manual_seed(3), depth)
    got = [feed.next() for _ in range(3)]
    state = feed.state_after
    feed.close()
    resumed = Prefetcher(fam.sample, 4, torch.Generator().set_state(state), depth)
    got += [resumed.next() for _ in range(3)]
    resumed.close()
    for a, b in zip(ref, got, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_errors_in_the_thread_reach_the_consumer():
    def boom(n, g):
        raise RuntimeError("decode failed: x.png")

    feed = Prefetcher(boom, 2, torch.Generator(), 2)
    with pytest.raises(RuntimeError, match="x.png"):
        feed.next()
    feed.close()
