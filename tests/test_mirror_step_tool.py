"""tools/mirror_step.py (the MetaMiDA "why not" measurement): exact at the identity map, and it sees
a map that rescales and couples the blocks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from helpers import make
from innerloop.types import Task
from test_mirror import perturb

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mirror_step.py"


def first_step():
    spec = importlib.util.spec_from_file_location("mirror_step", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.first_step


def test_identity_map_gives_the_euclidean_step_and_no_coupling():
    algo, batch = make("sgd", "maml", "sine", hidden=(8, 8), geometry_name="mirror")
    r = first_step()(algo, Task(*(t[0] for t in batch)), 0.05)
    assert len(r["ratio"]) == len(algo.geometry.blocks) == 3
    torch.testing.assert_close(torch.tensor(r["ratio"], dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert r["coupling"] == [0.0, 0.0, 0.0]
    assert r["mirror"] == r["euclid"] < r["start"]


def test_a_moved_map_changes_the_step_and_couples_later_blocks():
    algo, batch = make("sgd", "maml", "sine", hidden=(8, 8), geometry_name="mirror")
    perturb(algo.geometry, 0.5)
    r = first_step()(algo, Task(*(t[0] for t in batch)), 0.05)
    assert all(abs(v - 1.0) > 1e-3 for v in r["ratio"])
    assert r["coupling"][0] == 0.0  # block 1 depends on its own z only
    assert all(v > 1e-3 for v in r["coupling"][1:])
    assert r["mirror"] != r["euclid"]
