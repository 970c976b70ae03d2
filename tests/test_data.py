"""Synthetic task families."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.data import LinearBinary, Sine


def test_sine_alfa_protocol_ranges_and_shapes():
    fam = Sine(k_shot=10, query=100)
    t = fam.sample(64, torch.Generator().manual_seed(0))
    assert t.support_x.shape == (64, 10, 1) and t.query_y.shape == (64, 100, 1)
    xs = torch.cat([t.support_x, t.query_x], 1)
    ys = torch.cat([t.support_y, t.query_y], 1)
    assert xs.min() >= -5 and xs.max() <= 5
    assert ys.abs().max() <= 5


def test_sine_maml_form_is_a_shifted_sine():
    fam = Sine(k_shot=3, query=50, form="maml")
    g = torch.Generator().manual_seed(3)
    t = fam.sample(2, g)
    g = torch.Generator().manual_seed(3)
    amp = torch.rand((2, 1, 1), generator=g) * 4.9 + 0.1
    phase = torch.rand((2, 1, 1), generator=g) * math.pi
    x = torch.rand((2, 53, 1), generator=g) * 10 - 5
    torch.testing.assert_close(torch.cat([t.support_y, t.query_y], 1), amp * torch.sin(x - phase))


def test_fixed_tasks_are_deterministic():
    fam = Sine()
    a, b = fam.fixed_tasks(5, 7), fam.fixed_tasks(5, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.support_x, fam.fixed_tasks(5, 8).support_x)


def test_linear_task_labels_follow_the_task_vector():
    fam = LinearBinary(dim=20, support=10, query=100, balanced=False)
    t = fam.sample(8, torch.Generator().manual_seed(0))
    w = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))  # the first draw is w
    for x, y in ((t.support_x, t.support_y), (t.query_x, t.query_y)):
        assert torch.equal(((x @ w.unsqueeze(-1)).squeeze(-1) > 0).float(), y)
    assert torch.equal(t.support_y.sum(1), torch.full((8,), 5.0))  # balanced support
    assert 0.3 < t.query_y.mean() < 0.7


def test_linear_task_default_is_kfo_protocol_1000_points_both_sets_balanced():
    fam = LinearBinary()
    t = fam.sample(3, torch.Generator().manual_seed(1))
    assert t.support_x.shape == (3, 500, 100) and t.query_x.shape == (3, 500, 100)
    w = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))
    for x, y in ((t.support_x, t.support_y), (t.query_x, t.query_y)):
        assert torch.equal(((x @ w.unsqueeze(-1)).squeeze(-1) > 0).float(), y)
        assert torch.equal(y.sum(1), torch.full((3,), 250.0))
    # balancing negates points, so each coordinate stays N(0, 1)
    assert abs(t.query_x.mean().item()) < 0.01 and abs(t.query_x.std().item() - 1.0) < 0.01
    with pytest.raises(ValueError, match="even"):
        LinearBinary(query=9)


def test_linear_subspace_variant_keeps_w_in_the_subspace():
    fam = LinearBinary(dim=20, support=4, query=50, subspace=3, balanced=False)
    torch.testing.assert_close(fam.basis.T @ fam.basis, torch.eye(3), atol=1e-6, rtol=0)
    t = fam.sample(4, torch.Generator().manual_seed(0))
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    w = z @ fam.basis.T
    assert torch.equal(((t.query_x @ w.unsqueeze(-1)).squeeze(-1) > 0).float(), t.query_y)
