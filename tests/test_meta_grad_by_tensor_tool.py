"""tools/meta_grad_by_tensor.py (the MetaMiDA spike measurement): its replay is the run's own training."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

from innerloop.experiments.train import train
from run_helpers import tiny, write_config

TOOL = Path(__file__).resolve().parents[1] / "tools" / "meta_grad_by_tensor.py"


def test_per_tensor_norms_make_the_logged_norm_and_the_replay_is_the_run(tmp_path):
    train(tiny(), tmp_path / "run", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    out = tmp_path / "grads.csv"
    command = [sys.executable, str(TOOL), str(write_config(tmp_path / "tiny.toml")), "--until", "5", "--out", str(out),
               "--top", "2", "--next"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5]
    tensors = [k for k in rows[0] if k not in ("iteration", "total")]
    assert len(tensors) == 4 and all(k.startswith("model.") for k in tensors)  # MLP 1-8-1: 2 weights, 2 biases
    for r, log in zip(rows, logged[:5], strict=True):
        per_tensor = math.sqrt(sum(float(r[k]) ** 2 for k in tensors))
        assert math.isclose(per_tensor, float(r["total"]), rel_tol=1e-12)
        assert math.isclose(per_tensor, log["grad_norm_max"], rel_tol=1e-5)  # log_every=1: the step's own norm
    replayed = [json.loads(line)["loss"] for line in (tmp_path / "grads.csv.run" / "metrics.jsonl").read_text()
                .splitlines() if '"loss"' in line]
    assert replayed == [log["loss"] for log in logged[:5]]
    assert "5 meta-steps, 4 tensors" in printed
    # --next: meta-step 6 from the replay's last.pt is the run's sixth step, task by task
    step6 = re.search(r"meta-step 6: query loss \S+, meta-gradient norm (\S+)", printed)
    assert step6 and math.isclose(float(step6[1]), logged[5]["grad_norm_max"], rel_tol=1e-4)
    assert len(re.findall(r"  task \d: query loss", printed)) == 4  # meta-batch 4
    assert printed.count("|dq/d initial|") == 4 * 4  # per task, per adapted tensor
