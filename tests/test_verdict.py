"""The statistics of a results table: Student's t quantiles, Welch's interval, convergence, seed aggregates."""

from __future__ import annotations

import math

import pytest

from innerloop.experiments.reproduce import markdown, not_converged_detail
from innerloop.experiments.verdict import aggregate, converged, largest_fall, t975, welch_interval


def _t_cdf(x: float, df: int, n: int = 20000) -> float:
    """P(T <= x) by Simpson's rule on the t density from 0 to x (x > 0)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = [c * (1 + (x * i / n) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    h = x / n
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 19, 30, 31, 45, 100])
def test_t_quantiles_are_the_975_percent_points(df):
    assert _t_cdf(t975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_welch_df_is_rounded_down_and_equal_groups_give_the_pooled_t():
    d, half = welch_interval([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert d == 1.0 and half == pytest.approx(t975(4) * math.sqrt(2 / 3))
    # unequal variances: df = 2.39... is rounded down to 2
    d, half = welch_interval([0.0, 1.0, 2.0], [0.0, 0.1, 0.2])
    va, vb = 1 / 3, 0.01 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert 2 < df < 3 and half == pytest.approx(t975(2) * math.sqrt(va + vb))
    with pytest.raises(ValueError):
        welch_interval([1.0], [1.0, 2.0])


def test_convergence_reads_the_last_quarter_of_the_validation_curve():
    flat = [[i * 100, 0.9 + (0.001 if i % 2 else 0.0)] for i in range(1, 21)]
    assert converged(flat, 2000, "accuracy")[0] is True
    rising = [[i * 100, 0.5 + 0.01 * i] for i in range(1, 21)]
    ok, rise = converged(rising, 2000, "accuracy")
    assert ok is False and rise == pytest.approx(0.01 / 100 * 500)
    falling_mse = [[i * 100, 2.0 - 0.05 * i] for i in range(1, 21)]  # still improving
    assert converged(falling_mse, 2000, "mse")[0] is False
    assert converged(rising, 2000, "mse")[0] is True  # MSE rising: not an improvement still going on
    assert converged([[2000, 0.9]], 2000, "accuracy") == (None, None)


def test_a_swing_over_the_last_quarter_is_a_fall_below_the_best_beyond_its_validation_interval():
    steady = [[i * 100, 0.95, 0.005] for i in range(1, 21)]
    assert largest_fall(steady, 2000, "accuracy") == (False, 0.0)
    swinging = [p[:] for p in steady]
    swinging[17][1] = 0.80  # iteration 1800, inside the last quarter (after 1500): 15 points down
    swung, fall = largest_fall(swinging, 2000, "accuracy")
    assert swung is True and fall == pytest.approx(0.15)
    assert converged([p[:2] for p in swinging], 2000, "accuracy")[0] is True  # the rise rule alone lets it pass
    early = [p[:] for p in steady]
    early[5][1] = 0.80  # iteration 600: before the last quarter, not looked at
    assert largest_fall(early, 2000, "accuracy") == (False, 0.0)
    noisy = [p[:] for p in steady]
    noisy[17][1], noisy[17][2] = 0.90, 0.022  # 5 points down, within 3 validation intervals (6.6 points)
    swung, fall = largest_fall(noisy, 2000, "accuracy")
    assert swung is False and fall == pytest.approx(0.05)
    no_ci = [p[:2] for p in noisy]  # a log without intervals: only the 3-point floor applies
    assert largest_fall(no_ci, 2000, "accuracy")[0] is True
    mse = [[i * 100, 1.0, 0.01] for i in range(1, 21)]
    mse[17][1] = 1.2  # 20% above its best: within the 25% allowed for losses
    assert largest_fall(mse, 2000, "mse")[0] is False
    mse[17][1] = 1.5
    swung, fall = largest_fall(mse, 2000, "mse")
    assert swung is True and fall == pytest.approx(0.5)
    assert largest_fall([[2000, 0.9, 0.01]], 2000, "accuracy") == (None, None)


def test_a_row_that_swung_says_how_far_it_fell():
    runs = [{"mean": 0.9, "ci95": 0.01, "metric": "accuracy", "tasks": 600, "iterations": 100, "converged": c,
             "val_rise": rise, "val_rose": rose, "val_fall": fall, "val_swung": swung}
            for c, rise, rose, fall, swung in ((False, -0.01, False, 0.15, True), (True, 0.001, False, 0.01, False),
                                               (False, 0.02, True, 0.04, True))]
    detail = not_converged_detail({**aggregate(runs), "runs": runs})
    assert detail == " (2 of 3 seeds; up to +2.0 pt; falls up to 15.0 pt)"
    assert not_converged_detail(runs[0]) == " (falls up to 15.0 pt)"
    assert not_converged_detail({**runs[0], "metric": "mse", "val_fall": 0.5}) == " (falls up to 50%)"


def test_a_row_is_the_mean_over_seeds_with_their_spread():
    runs = [{"mean": m, "ci95": 0.01, "metric": "accuracy", "tasks": 600, "train_seconds": 60.0, "converged": c,
             "iterations": 100} for m, c in ((0.8, True), (0.9, True), (0.85, None))]
    row = aggregate(runs)
    assert row["mean"] == pytest.approx(0.85) and row["seed_sd"] == pytest.approx(0.05)
    assert row["n_seeds"] == 3 and row["train_seconds"] == 180.0 and row["converged"] is True
    runs[2]["converged"] = False
    assert aggregate(runs)["converged"] is False


def test_a_row_not_converged_says_how_many_seeds_still_rose_and_by_how_much():
    runs = [{"mean": 0.9, "ci95": 0.01, "metric": "accuracy", "tasks": 600, "iterations": 100, "converged": c,
             "val_rise": rise} for c, rise in ((False, 0.0057), (True, 0.001), (False, 0.0084))]
    row = {**aggregate(runs), "runs": runs, "label": "MAML", "name": "maml"}
    cell = markdown({"title": "t", "table": "t.toml", "scale": "cpu", "scale_overrides": [], "notes": "",
                     "rows": [row]}).splitlines()[-1].split(" | ")[6]
    assert cell == "**no** (2 of 3 seeds; up to +0.8 pt)"
    assert not_converged_detail({**runs[0], "metric": "mse"}) == ""  # a loss's rise is relative: no points
    assert not_converged_detail(runs[0]) == " (up to +0.6 pt)"


def test_a_finished_run_that_swung_in_its_last_quarter_is_not_converged(tmp_path):
    import json

    from innerloop.experiments.reproduce import run_result

    def run(vals, name):
        d = tmp_path / name
        d.mkdir()
        (d / "test.json").write_text(json.dumps({"metric": "accuracy", "mean": 0.9, "ci95": 0.01, "iterations": 2000}))
        rows = [{"iteration": 100 * (i + 1), "val": v, "val_ci95": 0.005} for i, v in enumerate(vals)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return run_result(d, 0)

    steady = run([0.95] * 20, "steady")
    assert steady["converged"] is True and steady["val_swung"] is False and steady["val_curve"][0] == [100, 0.95]
    swung = run([0.95] * 17 + [0.80, 0.90, 0.95], "swung")
    assert swung["converged"] is False and swung["val_swung"] is True and swung["val_rose"] is False
    assert swung["val_fall"] == pytest.approx(0.15)
