"""Behaviour unchanged across the architecture refactor (issue 15, item 8).

Recorded on main (c367cdd) before the executors were cut out of ``algorithms/base.py``:

* ``fixtures/refactor/{sine,glyph}/`` — ``metrics.jsonl`` and ``test.json`` of a short sine run and a
  short glyph run (loop path, fixed seed, one torch thread). The test re-runs them with the CLI and
  compares every recorded value exactly (JSON floats round-trip, so ``==`` is bit for bit), except
  wall-clock and memory fields. Keys a later version adds to a row are ignored, keys it drops fail.
* ``fixtures/refactor/meta_grads.pt`` — float64 meta-gradients, losses and evaluation outputs of a
  few algorithm × rule × execution-path combinations, compared with ``torch.equal``.

Re-record (only when a change of numbers is intended, and say so in the commit):
``python tests/test_refactor_unchanged.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import grads_of, make
from test_memory_controls import _conv_build

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures" / "refactor"
#: fields that measure the machine, not the computation
VOLATILE = {"seconds", "train_seconds", "peak_rss_mb", "wall_time", "time"}

RUNS = {
    "sine": ("configs/sine_maml.toml", [
        "train.iterations=12", "train.val_every=6", "train.val_tasks=20", "train.checkpoint_every=6",
        "train.log_every=1", "eval.tasks=30", "train.seed=3", 'train.execution="loop"',
    ]),
    "glyph": ("configs/glyphs_fomaml.toml", [
        "train.iterations=3", "train.meta_batch=3", "train.val_every=2", "train.val_tasks=6",
        "train.checkpoint_every=2", "train.log_every=1", "eval.tasks=8", "eval.batch=4", "train.seed=3",
        'train.execution="loop"', "task.query=2", "task.options={instances=3}", "model.channels=8",
        "algorithm.inner_steps=2", "algorithm.eval_inner_steps=3",
    ]),
}


def _train(name: str, out: Path) -> None:
    cfg, overrides = RUNS[name]
    # one intra-op thread: float32 reductions must not depend on the machine's core count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "innerloop", "train", str(ROOT / cfg), "--out", str(out), "--no-progress",
                    *overrides], check=True, env=env, capture_output=True, text=True, cwd=out.parent)


def _same(recorded, now, where: str) -> list[str]:
    """Differences between a recorded JSON value and the new one (recorded keys only)."""
    if isinstance(recorded, dict):
        if not isinstance(now, dict):
            return [f"{where}: {now!r} is not an object"]
        out = []
        for k, v in recorded.items():
            if k in VOLATILE:
                continue
            if k not in now:
                out.append(f"{where}.{k}: missing")
            else:
                out += _same(v, now[k], f"{where}.{k}")
        return out
    if isinstance(recorded, list):
        if not isinstance(now, list) or len(now) != len(recorded):
            return [f"{where}: {now!r} != {recorded!r}"]
        return [d for i, (a, b) in enumerate(zip(recorded, now, strict=True)) for d in _same(a, b, f"{where}[{i}]")]
    return [] if recorded == now and type(recorded) is type(now) else [f"{where}: {now!r} != recorded {recorded!r}"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_recorded_run_reproduces_bit_for_bit(name, tmp_path):
    _train(name, tmp_path / name)
    rec_rows, new_rows = _rows(FIX / name), _rows(tmp_path / name)
    # rows a later version adds (e.g. new events) are skipped; every recorded row must appear in order
    it = iter(new_rows)
    diffs = []
    for i, row in enumerate(rec_rows):
        match = next((r for r in it if all(r.get(k) == row.get(k) for k in ("event", "iteration") if k in row)
                      and set(row) - VOLATILE <= set(r)), None)
        diffs += [f"row {i}: no matching row"] if match is None else _same(row, match, f"metrics[{i}]")
    diffs += _same(json.loads((FIX / name / "test.json").read_text()),
                   json.loads((tmp_path / name / "test.json").read_text()), "test")
    assert not diffs, "\n".join(diffs)


# ---- float64 meta-gradients ------------------------------------------------------------------
# (algorithm, rule, family, path, extra attributes set on the algorithm)
CASES = {
    "maml-sgd-sine-loop": ("maml", "sgd", "sine", "loop", {}),
    "maml-meta_sgd-sine-vmap": ("maml", "meta_sgd", "sine", "vmap", {}),
    "maml-lslr-sine-threads": ("maml", "lslr", "sine", "threads", {}),
    "fomaml-alfa-sine-loop": ("fomaml", "alfa", "sine", "loop", {}),
    "anil-meta_sgd-sine-vmap": ("anil", "meta_sgd", "sine", "vmap", {}),
    "anil-sgd-linear-threads": ("anil", "sgd", "linear", "threads", {}),
    "random_init-meta_sgd-sine-loop": ("random_init", "meta_sgd", "sine", "loop", {}),
    "maml-mlplr-linear-vmap": ("maml", "mlplr", "linear", "vmap", {}),
    "maml-sgd-sine-loop-last1": ("maml", "sgd", "sine", "loop", {"second_order_steps": 1}),
    "conv-maml-meta_sgd-loop": ("conv", None, None, "loop", {}),
    "conv-maml-meta_sgd-vmap-chunk3": ("conv", None, None, "vmap", {"vmap_chunk": 3}),
    "conv-maml-meta_sgd-threads-ckpt": ("conv", None, None, "threads", {"checkpoint": True}),
}


def _case(name: str) -> dict[str, torch.Tensor]:
    algo_name, rule, family, path, attrs = CASES[name]
    algo, batch = _conv_build()() if algo_name == "conv" else make(rule, algo_name, family, steps=2)
    for k, v in attrs.items():
        setattr(algo, k, v)
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # the threads path's pool size (the sums are in task order either way)
    try:
        algo.zero_grad()
        stats = algo.meta_backward(batch, path)
        ev = algo.evaluate(batch, path)
    finally:
        torch.set_num_threads(n)
    out = {f"grad/{k}": v for k, v in grads_of(algo).items()}
    out.update({"stats/loss": torch.tensor(stats["loss"], dtype=torch.float64),
                "stats/metric": torch.tensor(stats["metric"], dtype=torch.float64),
                "eval/loss": ev.loss, "eval/metric": ev.metric, "eval/support_losses": ev.support_losses})
    out.update({f"eval/trace/{k}": v for k, v in ev.trace.items()})
    return out


@pytest.fixture(scope="module")
def recorded_grads():
    return torch.load(FIX / "meta_grads.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_meta_gradients_bit_for_bit(name, recorded_grads):
    rec, now = recorded_grads[name], _case(name)
    assert rec.keys() == now.keys()
    bad = [k for k in rec if not torch.equal(rec[k], now[k])]
    assert not bad, f"{name}: changed bits in {bad}"


def record() -> None:
    """Write the fixtures (run from the repository root on the commit whose numbers are the reference)."""
    import shutil
    import tempfile

    FIX.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / name
            _train(name, out)
            (FIX / name).mkdir(exist_ok=True)
            for f in ("metrics.jsonl", "test.json"):
                shutil.copy(out / f, FIX / name / f)
    torch.save({name: _case(name) for name in CASES}, FIX / "meta_grads.pt")


if __name__ == "__main__":
    record()
