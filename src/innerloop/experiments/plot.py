"""``innerloop plot``: PNG figures from recorded runs and results tables (matplotlib, Agg).

* :func:`trace_figure` — what a rule reported per inner step (``test.json`` ``trace``): ALFA's
  generated α and β per adapted tensor, MLPLR's λ and the share of tasks on its lr_min branch,
  KFC's scale per tensor, the support-gradient norm.
* :func:`inner_curves_figure` — support loss and support-gradient norm against the number of
  inner updates on the test tasks, several runs on one axes (MetaMiDA Fig. 1 style). From
  ``test.json`` (the training number of steps), or re-evaluated from the best checkpoint with more
  steps.
* :func:`table_figure` — a metric against a numeric row attribute, one line (or bar group) per
  series, from ``results/<table>.json`` (``innerloop reproduce``; rows carry the table's optional
  ``x`` and ``series``).

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot global state) and saved
with the Agg canvas. Problems with the inputs raise :class:`~innerloop.errors.UserError`.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from innerloop.errors import UserError
from innerloop.experiments.train import evaluate_run

#: titles of the trace groups (the part of a trace key before the tensor name)
GROUP_TITLES = {
    "alpha": "ALFA α per tensor (generated rate × α⁰)",
    "beta": "ALFA β per tensor (generated decay × β⁰)",
    "lr": "MLPLR λ (mean over tasks)",
    "lr_min_branch": "MLPLR: share of tasks on the lr_min branch",
    "scale": "KFC scale s per tensor",
    "support_grad_norm": "support-gradient norm",
}
GRAD_NORM = "support_grad_norm"


# ---- runs ------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    label: str
    test: dict[str, Any] | None  # test.json, if present


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _table_labels(table_dir: Path) -> dict[str, str]:
    """Row name → label from ``results/<table>.json`` next to ``results/<table>/`` (if any)."""
    report = table_dir.parent / f"{table_dir.name}.json"
    if not report.is_file():
        return {}
    try:
        rows = json.loads(report.read_text()).get("rows", [])
        return {r["name"]: r.get("label") or r["name"] for r in rows}
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        return {}


def _run(path: Path, label: str | None = None) -> Run:
    test = _read_json(path / "test.json") if (path / "test.json").is_file() else None
    if label is None:
        label = _table_labels(path.parent).get(path.name) or (test or {}).get("name") or path.name
    return Run(path, label, test)


def find_runs(paths: list[str | Path], labels: list[str] | None = None) -> list[Run]:
    """Run directories (``config.json`` or ``test.json``), or directories of runs such as
    ``results/<table>/`` (every subdirectory with a ``test.json``, in the table's row order, labelled
    by the table's row labels; upper-bound rows, which have no inner loop, are left out)."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"no such run directory: {p}")
        if (p / "config.json").is_file() or (p / "test.json").is_file():
            runs.append(_run(p))
            continue
        names = _table_labels(p)
        subs = [d for d in p.iterdir() if d.is_dir() and (d / "test.json").is_file()]
        order = {n: i for i, n in enumerate(names)}
        subs.sort(key=lambda d: (order.get(d.name, len(order)), d.name))
        found = [_run(d, names.get(d.name)) for d in subs]
        found = [r for r in found if (r.test or {}).get("kind") != "upper_bound"]
        if not found:
            raise UserError(f"{p} is neither a run directory (no config.json or test.json) nor a directory of runs")
        runs += found
    if labels is not None:
        if len(labels) != len(runs):
            raise UserError(f"--labels gives {len(labels)} labels for {len(runs)} runs "
                            f"({', '.join(str(r.path) for r in runs)})")
        for r, lab in zip(runs, labels, strict=True):
            r.label = lab
    return runs


def _stored(run: Run) -> dict[str, Any]:
    if run.test is None:
        raise UserError(f"{run.path} has no test.json (test the run with `innerloop eval`, or pass --steps to "
                        f"re-evaluate its checkpoint)")
    return run.test


def reevaluate(run: Run, steps: int, tasks: int | None = None, why: str = "") -> dict[str, Any]:
    """Test ``run``'s best checkpoint with ``steps`` inner steps (``test.json`` is not written)."""
    if (run.test or {}).get("kind") == "upper_bound":
        raise UserError(f"{run.path} is an upper-bound row (no inner loop to re-evaluate)")
    try:
        return evaluate_run(run.path, steps=steps, tasks=tasks, write=False)
    except UserError:
        raise
    except ValueError as e:  # e.g. a rule with per-step parameters asked for more steps than it has
        raise UserError(f"cannot re-evaluate {run.path} with {steps} inner steps{why}: {e}") from None


# ---- drawing helpers ---------------------------------------------------------------------------
def _figure(n_axes: int, *, ncols: int = 3, width: float = 5.0, height: float = 3.8):
    ncols = max(1, min(ncols, n_axes))
    nrows = math.ceil(n_axes / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_axes)]
    return fig, axes


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {out}")
    return out


def _save(fig: Figure, out: str | Path) -> Path:
    out = _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=120)
    return out


def _title(fig: Figure, title: str | None, width: int = 110) -> None:
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, width)))


def split_key(key: str) -> tuple[str, str]:
    """``alpha.body.0.weight`` → (``alpha``, ``body.0.weight``); chained rules prefix their index
    (``1.alpha.head.bias`` → (``1.alpha``, ``head.bias``)); an unqualified key is its own group."""
    parts = key.split(".")
    n = 2 if parts[0].isdigit() and len(parts) > 1 else 1
    return ".".join(parts[:n]), ".".join(parts[n:])


def _group_title(group: str) -> str:
    head, _, last = group.rpartition(".")
    base = GROUP_TITLES.get(last, last)
    return f"rule {head}: {base}" if head else base


def _step_ticks(ax, n: int) -> None:
    """Integer ticks on the x axis of a per-step plot with ``n`` points (at least -0.5 .. 0.5 wide)."""
    ax.set_xlim(-0.5, max(n - 1, 0) + 0.5)
    if n <= 20:
        ax.set_xticks(range(n))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


# ---- figures -----------------------------------------------------------------------------------
def trace_figure(runs: list[Run], out: str | Path, *, groups: list[str] | None = None, steps: int | None = None,
                 tasks: int | None = None, title: str | None = None) -> Path:
    """One panel per trace group (``alpha``, ``beta``, ``lr``, ...), one line per (run, tensor)
    across inner steps. Default groups: everything the rules reported (not the gradient norm).
    With ``steps`` each run is re-evaluated from its best checkpoint with that many inner steps."""
    _check_out(out)
    traces: list[tuple[Run, dict[str, list[float]]]] = []
    for r in runs:
        res = reevaluate(r, steps, tasks) if steps is not None else _stored(r)
        trace = res.get("trace") or {}
        wanted = {k: v for k, v in trace.items()
                  if (split_key(k)[0] in groups if groups else split_key(k)[0].rpartition(".")[2] != GRAD_NORM)}
        if not wanted:
            what = ", ".join(groups) if groups else "per-step values reported by the rule"
            have = ", ".join(sorted({split_key(k)[0] for k in trace})) or "nothing"
            raise UserError(f"{r.path}: its trace has no {what} (it has: {have}); the trace plot is for rules "
                            f"that report per-step values (ALFA, MLPLR, KFC) or --groups {GRAD_NORM}")
        traces.append((r, wanted))
    order: list[str] = []
    for _, t in traces:
        order += [g for g in dict.fromkeys(split_key(k)[0] for k in t) if g not in order]
    fig, axes = _figure(len(order))
    many = len(runs) > 1
    for ax, group in zip(axes, order, strict=True):
        for r, t in traces:
            for k, v in t.items():
                g, tensor = split_key(k)
                if g != group:
                    continue
                label = f"{r.label}: {tensor}" if many and tensor else (tensor or r.label)
                ax.plot(range(len(v)), v, marker="o", label=label)
        ax.set_title(_group_title(group), fontsize=10)
        ax.set_xlabel("inner step")
        _step_ticks(ax, max(len(v) for _, t in traces for k, v in t.items() if split_key(k)[0] == group))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _title(fig, title)
    return _save(fig, out)


def inner_curves(run: Run, steps: int | None = None, tasks: int | None = None) -> tuple[list[float], list[float]]:
    """Mean support loss and support-gradient norm over the test tasks after 0, 1, ... inner updates.

    From ``test.json``: the training number of steps S gives values after 0..S−1 updates. With
    ``steps`` = N the run is re-evaluated with N + 1 inner steps, whose "before step j" values are
    the values after j updates for j = 0..N (the last step's own update is not used).
    """
    res = reevaluate(run, steps + 1, tasks, f" (curves to {steps} updates)") if steps is not None else _stored(run)
    loss = list(res.get("support_loss_per_step") or [])
    gnorm = list((res.get("trace") or {}).get(GRAD_NORM) or [])
    if not loss:
        raise UserError(f"{run.path}: no support losses per inner step in its test.json")
    if not gnorm:
        raise UserError(f"{run.path}: its test.json has no trace.{GRAD_NORM} (recorded before the inner loop "
                        f"logged it); pass --steps N to re-evaluate its checkpoint")
    return loss, gnorm


def inner_curves_figure(runs: list[Run], out: str | Path, *, steps: int | None = None, tasks: int | None = None,
                        logy: bool = True, title: str | None = None) -> Path:
    """Support loss and support-gradient norm per inner update on the test tasks, one line per run
    (logarithmic y axes unless ``logy`` is false: a learned rule run past its training number of
    steps may diverge by many orders of magnitude)."""
    _check_out(out)
    curves = [(r, *inner_curves(r, steps, tasks)) for r in runs]
    fig, (a_loss, a_grad) = _figure(2, ncols=2)
    for r, loss, gnorm in curves:
        a_loss.plot(range(len(loss)), loss, marker="o", label=r.label)
        a_grad.plot(range(len(gnorm)), gnorm, marker="o", label=r.label)
    for ax, name in ((a_loss, "support loss"), (a_grad, "support-gradient norm")):
        ax.set_xlabel("inner updates")
        ax.set_ylabel(f"{name} (mean over test tasks)")
        _step_ticks(ax, max(len(c[1]) for c in curves))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, title)
    return _save(fig, out)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def table_figure(table_json: str | Path, out: str | Path, *, kind: str = "line", x: str = "x", y: str = "mean",
                 series: str = "series", paper: bool = False, title: str | None = None) -> Path:
    """``y`` (default the test metric's mean, with its 95% CI as error bars) against the numeric row
    attribute ``x``, one line per value of ``series``; ``kind="bar"`` draws grouped bars instead
    (categories: the ``x`` values, or the row labels when no row has one). ``paper`` adds the
    rows' paper figures (dashed, hollow markers)."""
    _check_out(out)
    path = Path(table_json)
    if not path.is_file():
        raise UserError(f"results file not found: {path} (written by `innerloop reproduce`)")
    report = _read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise UserError(f"{path} is not a results table (no rows); expected results/<table>.json")
    if kind not in ("line", "bar"):
        raise UserError(f"--kind must be line or bar, got {kind!r}")
    rows = [r for r in report["rows"] if _number(r.get(y)) is not None]
    if not rows:
        raise UserError(f"{path}: no row has a result {y!r} yet (rows not run or failed)")
    has_x = [r for r in rows if _number(r.get(x)) is not None]
    if kind == "line" and not has_x:
        raise UserError(f"{path}: no row has a numeric {x!r} (give the table's rows `x = ...`, or use --kind bar)")
    if has_x:
        rows = has_x
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(series) or ""), []).append(r)
    metric = next((r.get("metric") for r in rows if r.get("metric")), None)
    fig, (ax,) = _figure(1, width=7.0, height=4.5)
    err = (lambda r: r.get("ci95") or 0.0) if y == "mean" else (lambda r: 0.0)
    if kind == "line":
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r[x])
            line = ax.errorbar([r[x] for r in rs], [r[y] for r in rs], yerr=[err(r) for r in rs], marker="o",
                               capsize=3, label=name or (metric or y))
            pr = [r for r in rs if _number(r.get("paper")) is not None]
            if paper and pr:
                ax.plot([r[x] for r in pr], [r["paper"] for r in pr], linestyle="--", marker="o", mfc="none",
                        color=line.lines[0].get_color(), label=f"{name} (paper)" if name else "paper")
        xs = sorted({r[x] for r in rows})
        if len(xs) <= 12:
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
    else:
        cats = sorted({r[x] for r in rows}) if has_x else list(dict.fromkeys(r.get("label") or r["name"]
                                                                              for r in rows))
        key = (lambda r: r[x]) if has_x else (lambda r: r.get("label") or r["name"])
        width = 0.8 / len(groups)
        for i, (name, rs) in enumerate(groups.items()):
            by = {key(r): r for r in rs}
            pos = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(cats)) if cats[c] in by]
            vals = [by[c] for c in cats if c in by]
            ax.bar(pos, [r[y] for r in vals], width, yerr=[err(r) for r in vals], capsize=3,
                          label=name or (metric or y))
            pv = [(p, r["paper"]) for p, r in zip(pos, vals, strict=True) if _number(r.get("paper")) is not None]
            if paper and pv:
                ax.scatter(*zip(*pv, strict=True), marker="_", s=300, color="black", zorder=3,
                           label="paper" if i == 0 else None)
        ax.set_xticks(range(len(cats)), [f"{c:g}" if isinstance(c, float) else str(c) for c in cats],
                      rotation=0 if has_x else 30, ha="center" if has_x else "right", fontsize=8)
    ax.set_xlabel((report.get("x_label") or x) if has_x else "")
    ax.set_ylabel(f"test {metric} (mean ± 95% CI)" if y == "mean" and metric else y)
    ax.grid(alpha=0.3)
    if len(groups) > 1 or any(groups) or paper:
        ax.legend(fontsize=8)
    _title(fig, title if title is not None else report.get("title"))
    return _save(fig, out)


def validation_curves_figure(report: dict[str, Any], out: str | Path, *, title: str | None = None) -> Path | None:
    """Each trained row's validation curve (one thin line per seed, the row's colour), from a results
    table's ``runs[].val_curve``; ``None`` when no row has one (nothing is written then)."""
    rows = [r for r in report.get("rows", []) if any(run.get("val_curve") for run in r.get("runs", []))]
    if not rows:
        return None
    fig, (ax,) = _figure(1, width=8.0, height=4.8)
    cmap = matplotlib.colormaps["tab20"]
    for i, r in enumerate(rows):
        colour = cmap(i % 20)
        for j, run in enumerate(x for x in r["runs"] if x.get("val_curve")):
            its, vals = zip(*run["val_curve"], strict=True)
            style = "-" if run.get("converged") is not False else ":"
            ax.plot(its, vals, style, color=colour, lw=1.2, alpha=0.85,
                    label=r.get("label", r["name"]) if j == 0 else None)
    metric = rows[0].get("metric", "metric")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _title(fig, title if title is not None else f"{report.get('title', '')}: validation curves (one line per seed; "
                                                "dotted: not converged)", width=80)
    return _save(fig, out)
