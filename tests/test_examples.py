"""The examples of docs/own-model.md run (issue 17): innerloop inside a plain PyTorch loop and inside a
Lightning module, a few steps each; both take the same meta-steps on the same task stream."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _flat(algo) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in algo.meta_parameters()])


def test_plain_loop_meta_trains(capsys):
    plain = _load("plain_loop")
    start = _flat(plain.build(0)[1])
    res = plain.main(steps=3, meta_batch=4, log_every=1)
    assert "step 3: meta-loss" in capsys.readouterr().out
    moved = _flat(res["algo"])
    assert not torch.equal(moved, start)  # θ0 and the Meta-SGD step sizes were stepped
    assert torch.isfinite(moved).all() and res["after"] == res["after"]


# Lightning's own warnings about its internals under this torch (pytree deprecations, "few workers" hints)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_module_takes_the_same_steps_as_the_plain_loop():
    pytest.importorskip("pytorch_lightning" if importlib.util.find_spec("lightning") is None else "lightning")
    plain = _load("plain_loop")
    lit = _load("lightning_module")
    want = _flat(plain.main(steps=3, meta_batch=4, log_every=0)["algo"])
    got = _flat(lit.main(steps=3, meta_batch=4, quiet=True)["algo"])
    assert not torch.equal(got, _flat(plain.build(0)[1]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # mean query loss ≡ meta_backward's gradient
