"""The benchmark runs and reports its fields (no timing assertions)."""

from __future__ import annotations

import pytest

from innerloop.bench.meta_step import markdown, run_case


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_bench_case_reports_measurements(path):
    row = run_case("sine", path, 2, "meta_sgd", repeats=1, meta_batch=3)
    assert row["meta_batch"] == 3 and row["median_s"] > 0 and row["peak_rss_mb"] > 0
    assert "| sine" not in markdown([row], []) and f"| {path} | 2 |" in markdown([row], [])
