"""Statistics behind a results table: a row over training seeds, its convergence, and a claim's verdict.

* A row is trained once per seed (``train.seed``); each run is tested on the same fixed test tasks.
  The row's figure is the **mean over seeds**; its spread is the **between-seed standard deviation**;
  the test-task interval (1.96·std/√N over test tasks) of each run is shown as their mean.
* A run is **converged** when its validation metric no longer rises over the last quarter of its
  iterations: the least-squares line through the validation points of the last quarter (and the last
  point before it) rises by at most ``tol`` over a quarter of the iterations (0.005 = half a point of
  accuracy; for losses and MSE, a fall of at most 2% of the last value), and it does not swing there:
  no validation point of that window lies more than ``FALL_TOL`` below the best one before it (3 points
  of accuracy; for losses and MSE, 25% above it) and more than ``FALL_CI_FACTOR`` times its own
  validation interval below it (a fall that the validation tasks' sampling could explain is not a
  swing).
* A claim "row A beats row B" is **yes** / **no** when Welch's 95% interval for the difference of the
  two rows' seed means excludes 0, built from the between-seed variation alone (the test tasks are
  shared by every run, so their sampling is common to both rows); *not resolved* otherwise, and
  whenever either row has fewer than ``MIN_SEEDS`` seeds. A claim on a row with a run that did not
  converge is *not converged* and its difference is shown but not judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LOWER_IS_BETTER = {"mse", "loss"}
MIN_SEEDS = 3
ACCURACY_TOL = 0.005  # half a point of accuracy
LOSS_REL_TOL = 0.02  # 2% of the last value, for losses and MSE
FALL_TOL = 0.03  # a swing: 3 points of accuracy below the best validation point before it ...
LOSS_FALL_REL_TOL = 0.25  # ... or, for losses and MSE, 25% above it
FALL_CI_FACTOR = 3.0  # ... and more than 3 times that point's validation 95% interval

# Two-sided 95% quantiles of Student's t (t_{0.975, df}) for df = 1..30; df > 30 uses the
# Cornish-Fisher expansion below, which is within 1e-4 of the exact quantile there.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: float) -> float:
    """t_{0.975} with ``df`` degrees of freedom; a non-integer df (Welch) is rounded down (conservative)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    d = math.floor(df)
    if d <= len(_T975):
        return _T975[d - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * d) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * d**2)


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``(mean(a) − mean(b), half-width of Welch's 95% interval)``; needs ≥ 2 values on each side."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least 2 values per group")
    ma, sa = mean_sd(a)
    mb, sb = mean_sd(b)
    va, vb = sa**2 / len(a), sb**2 / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return ma - mb, 0.0
    df = se2**2 / ((va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0))
    return ma - mb, t975(df) * math.sqrt(se2)


def converged(curve: Sequence[Sequence[float]], iterations: int, metric: str, tol: float | None = None
              ) -> tuple[bool | None, float | None]:
    """``(converged?, rise over the last quarter)`` from a validation curve ``[(iteration, value), ...]``.

    The rise is in the metric's "better" direction (a fall for losses). ``None`` when the curve has
    fewer than 2 points in the window (too few validations to tell).
    """
    window = _window(curve, iterations)
    if len(window) < 2 or iterations <= 0:
        return None, None
    xs, ys = [float(p[0]) for p in window], [float(p[1]) for p in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    lower = metric in LOWER_IS_BETTER
    rise = (-slope if lower else slope) * iterations / 4
    if tol is None:
        tol = LOSS_REL_TOL * abs(ys[-1]) if lower else ACCURACY_TOL
    return rise <= tol, rise


def _window(curve: Sequence[Sequence[float]], iterations: int) -> list[Sequence[float]]:
    """The validation points of the last quarter of the iterations, with the last point before it."""
    start = 0.75 * iterations
    before = [p for p in curve if p[0] <= start]
    return ([before[-1]] if before else []) + [p for p in curve if p[0] > start]


def largest_fall(curve: Sequence[Sequence[float]], iterations: int, metric: str
                 ) -> tuple[bool | None, float | None]:
    """``(swung?, largest fall)`` over the last quarter of a validation curve ``[(iteration, value[, ci95]), ...]``.

    The fall of a point is how far it lies below the best point before it in the window (points of
    accuracy; for losses, relative to that best value). It is a swing when it exceeds ``FALL_TOL``
    (``LOSS_FALL_REL_TOL``) and ``FALL_CI_FACTOR`` times the point's validation interval, when the
    curve has one. ``(None, None)`` when the window has fewer than 2 points.
    """
    window = _window(curve, iterations) if iterations > 0 else []
    if len(window) < 2:
        return None, None
    lower = metric in LOWER_IS_BETTER
    tol = LOSS_FALL_REL_TOL if lower else FALL_TOL
    best, worst, swung = float(window[0][1]), 0.0, False
    for p in window[1:]:
        y = float(p[1])
        ci = float(p[2]) if len(p) > 2 and p[2] is not None else 0.0
        scale = abs(best) if lower and best else 1.0  # a loss's fall is relative to its best value
        fall, noise = ((y - best) if lower else (best - y)) / scale, ci / scale
        worst = max(worst, fall)
        swung = swung or (fall > tol and fall > FALL_CI_FACTOR * noise)
        best = min(best, y) if lower else max(best, y)
    return swung, worst


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A row's figures from its finished runs (each a ``test.json`` plus ``seed`` and ``converged``)."""
    means = [r["mean"] for r in runs]
    m, sd = mean_sd(means)
    out: dict[str, Any] = dict(runs[0]) if len(runs) == 1 else {}  # one seed: every field of its run
    out |= {
        "mean": m, "seed_sd": sd, "n_seeds": len(runs), "seed_means": means,
        "ci95": sum(r["ci95"] for r in runs) / len(runs),  # test-task interval of one run, averaged
        "metric": runs[0]["metric"], "tasks": runs[0].get("tasks"),
        "converged": all(r.get("converged") is not False for r in runs),
    }
    for key in ("iterations", "train_seconds", "peak_rss_mb", "val"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = sum(vals) if key == "train_seconds" else (max(vals) if key != "val" else sum(vals) / len(vals))
    return out


def trained_to(progress: dict[str, Any]) -> str:
    """``trained to 4000, 4000 of 6000 meta-steps``: how far a row's unfinished runs got (``in_progress``)."""
    return f"trained to {', '.join(str(i) for i in progress['iterations'])} of {progress['of']} meta-steps"


def check_claim(rows: dict[str, dict[str, Any]], better: str, than: str) -> tuple[str, str]:
    """``(verdict, detail)`` for "row ``better`` beats row ``than``" (see the module docstring)."""
    a, b = rows.get(better, {}), rows.get(than, {})
    for name, r in ((better, a), (than, b)):
        if "mean" not in r:
            if r.get("why"):
                return "not run", f"row {name} {r['why']}"
            p = r.get("in_progress")
            return "not run", f"row {name} has no result" + (f" yet ({trained_to(p)})" if p else "")
    sign = -1.0 if a.get("metric") in LOWER_IS_BETTER else 1.0
    word = "lower" if sign < 0 else "higher"
    sa, sb = a.get("seed_means", [a["mean"]]), b.get("seed_means", [b["mean"]])
    diff = sign * (a["mean"] - b["mean"])  # > 0: the claimed row is better
    head = f"{a['mean']:.4f} vs {b['mean']:.4f} ({word} is better; seeds {len(sa)} and {len(sb)}): by {diff:+.4f}"
    if a.get("converged") is False or b.get("converged") is False:
        return "not converged", head
    if len(sa) < MIN_SEEDS or len(sb) < MIN_SEEDS:
        return "not resolved", f"{head} (fewer than {MIN_SEEDS} seeds: not judged)"
    _, half = welch_interval(sa, sb)
    verdict = "yes" if diff - half > 0 else "no" if diff + half < 0 else "not resolved"
    return verdict, f"{head} ± {half:.4f}"
