"""Multi-process meta-training (torch.distributed, gloo on loopback) matches one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from innerloop.executors import Distributed, Loop, resolve
from innerloop.executors import distributed as collectives
from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments import distributed
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.train import train
from innerloop.types import Task

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sine_maml.toml"
SMALL = [
    "model.hidden=[8]",
    "task.query=10",
    "rule.name=meta_sgd",
    "train.meta_batch=4",
    "train.val_every=2",
    "train.val_tasks=5",  # not a multiple of the world size: uneven shares
    "train.log_every=1",
    "train.checkpoint_every=100",
    "train.dtype=float64",
    "eval.tasks=7",
    "eval.batch=3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, argv: list[str], logs: Path, timeout: float = 120) -> list[tuple[int, str, str]]:
    """Run ``python ARGV`` as ``world`` ranks on loopback; return (status, stdout, stderr) per rank."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for r in range(world):
        out, err = open(logs / f"rank{r}.out", "w+"), open(logs / f"rank{r}.err", "w+")  # noqa: SIM115
        files.append((out, err))
        procs.append(subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err,
                                      env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
    try:
        for p in procs:
            p.wait(timeout=timeout)
        res = []
        for p, (out, err) in zip(procs, files, strict=True):
            out.seek(0)
            err.seek(0)
            res.append((p.returncode, out.read(), err.read()))
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for out, err in files:
            out.close()
            err.close()


WORKER = r"""
import contextlib, io, json, sys
import torch
from innerloop.executors import Loop
from innerloop.executors import distributed as c
from innerloop.experiments import distributed as d
from innerloop.experiments.cli import main

config, root, small = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = {}

def cli(name, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["train", config, "--no-progress", *argv])
    report[name] = [status, out.getvalue(), err.getvalue()]

# the CLI path: the first call initialises the process group from the environment, the others reuse it
cli("first", "--out", root + "/two", *small, "train.iterations=2")
cli("resume", "--out", root + "/two", *small, "train.iterations=4", "--resume")
cli("indivisible", "--out", root + "/bad", *small, "train.meta_batch=3", "train.iterations=2")
cli("vmap", "--out", root + "/vmap", *small, "train.iterations=2", 'train.execution="vmap"')

# what train() runs under the launch: the configured executor inside Distributed
ex = d.executor_for(Loop())
report["executor"] = [type(ex).__name__, type(ex.inner).__name__, d.executor_for(ex) is ex]

# the helpers on their own
r = c.rank()
a = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
b = torch.nn.Parameter(torch.zeros(2))  # float32: its own buffer
z = torch.nn.Parameter(torch.zeros(1))  # no gradient on any rank
a.grad = torch.full((3,), 2.0 + 4 * r, dtype=torch.float64)
if r == 1:
    b.grad = torch.tensor([4.0, 8.0])
c.all_reduce_grads([a, b, z])
lo, hi = c.shard(5)
report["helpers"] = {"a": a.grad.tolist(), "b": b.grad.tolist(), "c": z.grad is None,
                     "stats": c.mean_stats({"loss": float(r)}, torch.device("cpu")),
                     "gathered": torch.cat(c.gather_list([torch.arange(lo, hi)])).tolist(), "main": d.is_main()}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One launch of 2 ranks running every scenario (process start-up dominates the test's time)."""
    root = tmp_path_factory.mktemp("dist")
    res = _launch(2, ["-c", WORKER, str(CONFIG), str(root), json.dumps(SMALL)], root / "logs")
    assert [r[0] for r in res] == [0, 0], [r[2][-3000:] for r in res]
    return root, [json.loads(r[1].strip().splitlines()[-1]) for r in res]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_resume(two_ranks, tmp_path):
    """2 ranks (2 meta-steps, then --resume to 4) ≡ 1 process (4 meta-steps straight), float64."""
    root, reports = two_ranks
    for r, rep in enumerate(reports):
        for name in ("first", "resume"):
            status, out, err = rep[name]
            assert status == 0, err
            assert ("run directory" in out) == (r == 0)  # only rank 0 prints the result
    one, two = tmp_path / "one", root / "two"
    train(load(CONFIG, [*SMALL, "train.iterations=4"]), one, progress=False)

    a, b = ckpt.load_torch(one / "last.pt"), ckpt.load_torch(two / "last.pt")
    assert a["iteration"] == b["iteration"] == 4 and a["best_iteration"] == b["best_iteration"]
    assert a["algorithm"].keys() == b["algorithm"].keys()
    diff = max((a["algorithm"][k] - b["algorithm"][k]).abs().max().item() for k in a["algorithm"])
    assert diff < 1e-12, diff
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-10, atol=1e-14)
    assert torch.equal(a["generator"], b["generator"])  # the same meta-batches were drawn

    # rank 0 alone wrote the log: the same rows as one process, with the same numbers
    ra, rb = _rows(one), _rows(two)
    tests = [r for r in rb if r.get("event") == "test"]
    rb = [r for r in rb if r.get("event") not in ("resume", "test")] + tests[-1:]
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for k in ("loss", "val", "val_ci95", "mean", "ci95"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-10), (k, x, y)
    ta, tb = (json.loads((r / "test.json").read_text()) for r in (one, two))
    assert ta["tasks"] == tb["tasks"] == 7 and tb["mean"] == pytest.approx(ta["mean"], rel=1e-10)
    assert sorted(p.name for p in two.iterdir() if p.name != ".lock") == [
        "best.pt", "config.json", "last.pt", "metrics.jsonl", "test.json", "test_tasks.csv"]


def _numbers(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock time and the executor's name."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "path")} for r in _rows(run)]


def test_two_ranks_run_the_configured_executor_inside_distributed(two_ranks, tmp_path):
    """Under the launch train() runs ``train.execution`` (here vmap) through the Distributed executor,
    and 2 ranks log what 1 process logs on the same tasks (float64)."""
    root, reports = two_ranks
    for rep in reports:
        assert rep["executor"] == ["Distributed", "Loop", True]
        assert rep["vmap"][0] == 0, rep["vmap"][2]
    one = tmp_path / "vmap"
    train(load(CONFIG, [*SMALL, "train.iterations=2", 'train.execution="vmap"']), one, progress=False)
    ra, rb = _rows(one), _rows(root / "vmap")
    assert ra[0]["path"] == rb[0]["path"] == "vmap"
    assert len(ra) == len(rb)  # one writer: a second rank writing would repeat rows
    for x, y in zip(ra, rb, strict=True):
        assert sorted(x) == sorted(y)
        for k in ("loss", "metric", "val", "val_ci95", "mean", "ci95"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-10), (k, x, y)


def test_distributed_by_name_is_its_inner_executor_in_one_process(tmp_path):
    ex = resolve("distributed", chunk=3)
    assert isinstance(ex, Distributed) and isinstance(ex.inner, Loop)
    assert isinstance(distributed.executor_for(Loop()), Loop)  # one process: nothing wrapped
    for name in ("loop", "distributed"):
        train(load(CONFIG, [*SMALL, "train.iterations=2", f'train.execution="{name}"']), tmp_path / name,
              progress=False)
    assert _numbers(tmp_path / "loop") == _numbers(tmp_path / "distributed")  # bit for bit


def test_meta_batch_not_divisible_by_world_size(two_ranks):
    with pytest.raises(ConfigError, match=r"train\.meta_batch=6 is not divisible by the world size 4"):
        distributed.check_meta_batch(6, world=4)
    batch = Task(*(torch.arange(12.0).reshape(6, 2) + i for i in range(4)))
    parts = [collectives.split_batch(batch, r, 3) for r in range(3)]
    assert all(p.num_tasks == 2 for p in parts)
    for i, t in enumerate(batch):
        assert torch.equal(torch.cat([p[i] for p in parts]), t)

    root, reports = two_ranks
    for rep in reports:
        status, _, err = rep["indivisible"]
        assert status == 2 and err == ("innerloop: train.meta_batch=3 is not divisible by the world size 2; "
                                       "use a multiple of 2 or start another number of processes\n")
    assert not (root / "bad").exists()


def test_gradient_all_reduce_and_gather(two_ranks):
    for r, rep in enumerate(two_ranks[1]):
        o = rep["helpers"]
        assert o["a"] == [4.0] * 3  # mean of 2 and 6
        assert o["b"] == [2.0, 4.0]  # missing on rank 0: counts as zero there
        assert o["c"] is True  # missing on every rank: stays None
        assert o["stats"] == {"loss": 0.5}
        assert o["gathered"] == [0, 1, 2, 3, 4]  # uneven shares (3 + 2), in rank order
        assert o["main"] == (r == 0)


DYING_PEER = r"""
import os, torch
from innerloop.executors import distributed as c
from innerloop.experiments import distributed as d
d.EXIT_TIMEOUT = 2.0
d.init("cpu")
a = torch.nn.Parameter(torch.zeros(3))
a.grad = torch.ones(3)
c.all_reduce_grads([a])
if c.rank() == 1:
    os._exit(0)  # leaves without meeting its peer at exit
print("done")
"""


def test_exit_does_not_hang_when_a_peer_left(tmp_path):
    """Ranks meet before tearing the group down; a peer that is gone costs the exit timeout, not a hang."""
    res = _launch(2, ["-c", DYING_PEER], tmp_path, timeout=60)
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    assert res[0][1].strip() == "done"
    assert "failed to pass monitoredBarrier" in res[0][2]
