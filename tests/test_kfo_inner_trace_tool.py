"""tools/kfo_inner_trace.py (the KFC "why not" measurement): its replay is the run's own meta-steps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from innerloop.experiments.train import train
from run_helpers import tiny, write_config

TOOL = Path(__file__).resolve().parents[1] / "tools" / "kfo_inner_trace.py"
KFC = ["rule.name=kfc", "rule.lr=0.05", "train.iterations=3"]


def test_replayed_meta_steps_are_the_runs_and_every_step_is_traced(tmp_path):
    train(tiny(*KFC), tmp_path / "run", progress=False)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    out = subprocess.run([sys.executable, str(TOOL), str(write_config(tmp_path / "tiny.toml")), *KFC, "--at", "3"],
                         capture_output=True, text=True, check=True).stdout
    replayed = [float(v) for v in re.findall(r"meta-step \d+: query loss (\S+),", out)]
    assert replayed == [float(f"{v:.4g}") for v in logged[:2]]
    traced = re.findall(r"  step (\d) (\S+) ", out)  # 4 tasks × 1 inner step × 4 tensors (MLP 1-8-1)
    assert len(traced) == 4 * 1 * 4 and {s for s, _ in traced} == {"0"}
    assert out.count("support loss before each step") == 4


def test_refuses_a_rule_that_is_not_kfo(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), str(write_config(tmp_path / "tiny.toml"))], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "is not KLin or KFC" in r.stderr
