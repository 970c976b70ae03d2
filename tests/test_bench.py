"""The benchmark runs and reports its fields (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from innerloop.bench.meta_step import main, markdown, run_case

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_bench_case_reports_measurements(path):
    row = run_case("sine", path, 2, "meta_sgd", repeats=1, meta_batch=3)
    assert row["meta_batch"] == 3 and row["median_s"] > 0 and row["peak_rss_mb"] > 0
    assert "| sine" not in markdown([row], []) and f"| {path} | 2 |" in markdown([row], [])
    assert row["device"] == "cpu" and "peak_cuda_mb" not in row and "peak RSS" in markdown([row], [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_error_line_and_exit_2(capsys):
    assert main(["--device", "cuda", "--workloads", "sine"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "torch.cuda.is_available() is false" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2_without_a_traceback_from_the_command_line():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "innerloop.bench", "--device", "cuda:0"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: device 'cuda:0'")
