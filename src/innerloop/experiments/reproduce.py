"""``innerloop reproduce TABLE``: run every row of a table file (format: :mod:`innerloop.experiments.tables`),
then write a results report.

Each row trains in its own process (``python -m innerloop train``), so its wall-clock and peak
memory are its own; a row may name its own ``base``. Finished rows (``test.json`` present) are
skipped; interrupted ones resume. A stop (Ctrl-C, SIGTERM) stops every run at a checkpoint and
starts no new one (:mod:`innerloop.experiments.child_runs`).
Results go to ``results/<table>/<row>/`` (run directories), ``results/<table>.json`` and
``results/<table>.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from innerloop.experiments.checkpoint import save_json, save_text
from innerloop.experiments.child_runs import ChildRuns, stopped_by
from innerloop.experiments.config import ConfigError, config_diff, load, to_dict
from innerloop.experiments.tables import (
    Row,
    Table,
    read_table,
    resolve_table,
    row_base,
    row_config,
    row_overrides,
    row_seeds,
    runs_at,
    shared_owner,
)
from innerloop.experiments.upper_bound import UpperBoundOptions
from innerloop.experiments.verdict import LOWER_IS_BETTER, aggregate, converged, largest_fall, trained_to

SMOKE = ["train.iterations=1", "train.val_every=1", "train.val_tasks=2", "train.checkpoint_every=1", "eval.tasks=2"]


def run_dirs(out: Path, table: Table, row: Row) -> list[tuple[int | None, Path]]:
    """``(seed, run directory)`` of each training run of ``row``; seed ``None``: the config's own ``train.seed``."""
    n = row_seeds(table, row)
    if n == 1:
        return [(None, out / row.name)]
    return [(k, out / row.name / f"seed{k}") for k in range(n)]


def _seed_overrides(seed: int | None) -> list[str]:
    return [] if seed is None else [f"train.seed={seed}"]


EXTENDABLE = {"train.iterations"}  # a finished run may be resumed to more iterations
#: where a run trains and what it logs: `reproduce --device` and such never make a run stale
HOW_RUN = {"train.device", "train.log"}


def run_state(table_path: Path, table: Table, row: Row, scale: str, seed: int | None, run_dir: Path
              ) -> tuple[str, list[str]]:
    """Whether a run is ``"new"``, ``"partial"``, ``"done"``, ``"extend"`` (more iterations than it ran) or
    ``"stale"`` (its stored config differs from the row's in a key that cannot be resumed), with the keys."""
    stored_path = run_dir / "config.json"
    if not stored_path.is_file():
        return "new", []
    expected = to_dict(load(row_base(table_path, table, row), [*row_overrides(table, row, scale),
                                                               *_seed_overrides(seed)]))
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "stale", ["config.json (unreadable)"]
    keys = [k for k in config_diff(stored, expected) if k not in HOW_RUN]
    if [k for k in keys if k not in EXTENDABLE]:
        return "stale", keys
    done = (run_dir / "test.json").exists()
    if keys:
        if stored["train"]["iterations"] > expected["train"]["iterations"]:
            return "stale", keys
        return ("extend" if done else "partial"), keys
    return ("done" if done else "partial"), []


def set_aside(run_dir: Path) -> Path:
    """Move a stale run directory to ``<dir>.stale<N>`` (nothing is deleted)."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.stale{n}").exists():
        n += 1
    dest = run_dir.with_name(f"{run_dir.name}.stale{n}")
    run_dir.rename(dest)
    return dest


def validation_curve(run_dir: Path) -> list[list[float | None]]:
    """``[[iteration, validation metric, its 95% interval or None], ...]`` from a run's metrics.jsonl (the
    last entry per iteration)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    points: dict[int, float] = {}
    cis: dict[int, float | None] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("val"), int | float) and "iteration" in row:
            points[int(row["iteration"])] = float(row["val"])
            ci = row.get("val_ci95")
            cis[int(row["iteration"])] = float(ci) if isinstance(ci, int | float) else None
    return [[it, points[it], cis[it]] for it in sorted(points)]


def progress(run_dir: Path) -> tuple[int, float | None]:
    """The last logged training iteration of a run and its clock's seconds per iteration (None before one)."""
    path = run_dir / "metrics.jsonl"
    last: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "loss" in row and "iteration" in row:
                last = row
    it = int(last.get("iteration", 0))
    secs = last.get("seconds")
    return it, (float(secs) / it if it and isinstance(secs, int | float) else None)


def run_result(run_dir: Path, seed: int | None) -> dict[str, Any]:
    """A finished run's ``test.json`` with its seed, validation curve and convergence."""
    res = json.loads((run_dir / "test.json").read_text())
    res.pop("trace", None)
    res.pop("support_loss_per_step", None)
    if seed is not None:
        res["seed"] = seed
    elif (run_dir / "config.json").is_file():
        res["seed"] = json.loads((run_dir / "config.json").read_text())["train"]["seed"]
    curve_ci = validation_curve(run_dir)
    curve = [p[:2] for p in curve_ci]
    if curve:
        res["val_curve"] = curve
    if res.get("kind") != "upper_bound" and res.get("iterations"):
        ok, rise = converged(curve, res["iterations"], res["metric"])
        swung, fall = largest_fall(curve_ci, res["iterations"], res["metric"])
        res["converged"] = (ok and not swung) if ok is not None else None
        res["val_rise"], res["val_rose"], res["val_fall"], res["val_swung"] = rise, ok is False, fall, swung
    return res


def run_one(table_path: Path, table: Table, row: Row, scale: str, out: Path, seed: int | None, run_dir: Path,
            children: ChildRuns, threads: int | None = None, run_overrides: list[str] | None = None
            ) -> dict[str, Any]:
    """Train (or resume, or extend) one seed of a row; its result, ``failed`` with the log, or
    ``stopped`` (a stop came: see :mod:`~innerloop.experiments.child_runs`).
    ``run_overrides`` (only keys of :data:`HOW_RUN`, e.g. ``train.device=cuda``) come last."""
    state, _ = run_state(table_path, table, row, scale, seed, run_dir)
    if state == "done":
        return {**run_result(run_dir, seed), "skipped": True}
    if children.signal is not None:
        return {"stopped": True}
    if state == "extend":  # keep the shorter run's test result beside the resumed run
        test = run_dir / "test.json"
        iters = json.loads(test.read_text()).get("iterations")
        test.rename(run_dir / f"test-{iters}-iterations.json")
    base = row_base(table_path, table, row)
    overrides = [*row_overrides(table, row, scale), *_seed_overrides(seed), *(run_overrides or [])]
    if row.kind == "upper_bound":
        opts = row.upper_bound or UpperBoundOptions()
        init = None
        if opts.init is not None:
            init_path, init_table, init_row = shared_owner(table_path, table,
                                                           next(r for r in table.row if r.name == opts.init), scale)
            dirs = run_dirs(out.parent / init_path.stem, init_table, init_row)
            init = dict(dirs).get(seed, dirs[0][1])
        cmd = [sys.executable, "-m", "innerloop", "upper-bound", str(base), "--out", str(run_dir), "--no-progress",
               *opts.cli_args(init), *overrides]
    else:
        cmd = [sys.executable, "-m", "innerloop", "train", str(base), "--out", str(run_dir), "--no-progress",
               *overrides]
    if (run_dir / "config.json").exists():  # started before: continue it
        cmd.append("--resume")
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        code = children.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code is None or stopped_by(code) is not None:
        return {"stopped": True}
    if code != 0 or not (run_dir / "test.json").exists():
        return {"failed": True, "log": str(log), "returncode": code}
    return run_result(run_dir, seed)


def row_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's entry from its runs: failed if any failed, else the seed aggregate of the finished ones."""
    failed = [r for r in runs if r.get("failed")]
    if failed:
        return failed[0]
    finished = [r for r in runs if "mean" in r]
    if not finished:
        return {"not_run": True}
    return {**aggregate(finished), "runs": finished}


def stored_row(table_path: Path, table: Table, row: Row, scale: str, out_root: Path) -> dict[str, Any]:
    """A row's entry from the runs already on disk (rows not run now): stale runs are not counted.
    ``table_path, table, row`` name the row that owns the runs (:func:`shared_owner`)."""
    out = Path(out_root) / table_path.stem
    runs, started = [], []
    for seed, d in run_dirs(out, table, row):
        state = run_state(table_path, table, row, scale, seed, d)[0]
        if state == "done":
            runs.append({**run_result(d, seed), "skipped": True})
        elif state in ("partial", "extend") and row.kind == "train":
            started.append(progress(d)[0])
    res = row_result(runs)
    if res.get("not_run") and started:  # e.g. runs resumed to more iterations: their old results no longer count
        res["in_progress"] = {"iterations": started, "of": row_config(table_path, table, row, scale).train.iterations}
    return res


def _smoke_row(row: Row, scales: dict[str, list[str]]) -> Row:
    """``row`` for ``--smoke``: one seed, its own runs, and the smoke overrides after its per-scale ones
    (which may set e.g. ``eval.tasks``); an upper-bound row trains 2 tasks for 1 step."""
    update: dict[str, Any] = {"seeds": 1, "same_as": None,
                              "scale": {k: [*row.scale.get(k, []), *SMOKE] for k in scales}}
    if row.kind == "upper_bound":
        update["upper_bound"] = (row.upper_bound or UpperBoundOptions()).model_copy(update={"steps": 1, "tasks": 2})
    return row.model_copy(update=update)


def reproduce(table_path: str | Path, *, scale: str = "cpu", out_root: str | Path = "results", jobs: int = 1,
              only: list[str] | None = None, restart_stale: bool = False, smoke: bool = False,
              collect: bool = False, run_overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the rows of a table (see the module docstring). ``smoke``: one meta-step per row, one seed, a
    couple of validation and test tasks — a check that every row builds and runs, written under
    ``out_root`` like a real run (use a scratch directory). ``collect``: train nothing, only rewrite
    ``results/<table>.json`` and ``.md`` from the finished runs on disk (stale runs are left out)."""
    table_path = resolve_table(table_path)
    table = read_table(table_path)
    if smoke:
        table = table.model_copy(update={"seeds": 1, "row": [_smoke_row(r, table.scale) for r in table.row],
                                         "scale": {k: [*v, *SMOKE] for k, v in table.scale.items()}})
    if scale not in table.scale:
        raise ConfigError(f"{table_path} has no scale {scale!r} (it has: {', '.join(table.scale)})")
    unknown = sorted(set(only or []) - {r.name for r in table.row})
    if unknown:
        raise ConfigError(f"{table_path}: no row named {', '.join(unknown)} "
                          f"(rows: {', '.join(r.name for r in table.row)})")
    rows = [] if collect else [r for r in table.row if (not only or r.name in only) and runs_at(r, scale)]
    # validate every row's config before running anything; a shared row's runs are its owner's
    owners = {r.name: shared_owner(table_path, table, r, scale) for r in table.row if runs_at(r, scale)}
    for r in rows:
        row_config(table_path, table, r, scale)
    name = table_path.stem
    runs = [(r, owners[r.name], seed, d) for r in rows
            for seed, d in run_dirs(Path(out_root) / owners[r.name][0].stem, *owners[r.name][1:])]
    stale = [(d, keys) for _, (tp, t, o), seed, d in runs
             for state, keys in [run_state(tp, t, o, scale, seed, d)] if state == "stale"]
    if stale and not restart_stale:
        raise ConfigError(f"{len(stale)} run(s) under {out_root} were made with another config than the table's now: "
                          + "; ".join(f"{d} ({', '.join(k[:4])})" for d, k in stale[:3])
                          + " — pass --restart-stale to set them aside (renamed *.staleN) and run them again")
    for d, _ in stale:
        set_aside(d)
    threads = 1 if jobs > 1 else None
    results: dict[str, dict[str, Any]] = {}
    with ChildRuns() as children, ThreadPoolExecutor(max_workers=jobs) as ex:
        # upper-bound rows may start from a trained row's θ0, so they run once the trained rows are done
        for phase in ([x for x in runs if x[0].kind == "train"], [x for x in runs if x[0].kind != "train"]):
            done = list(ex.map(lambda x: run_one(*x[1], scale, Path(out_root) / x[1][0].stem, x[2], x[3], children,
                                                 threads, run_overrides), phase))
            for r in {x[0].name: x[0] for x in phase}.values():
                results[r.name] = row_result([res for x, res in zip(phase, done, strict=True) if x[0] is r])
    children.raise_if_stopped()  # the report is written by the run that finishes (or by --collect)
    report = {"title": table.title, "table": str(table_path), "scale": scale,
              "scale_overrides": table.scale[scale], "notes": table.notes, "rows": []}
    if table.x_label:
        report["x_label"] = table.x_label
    for r in table.row:  # every row of the table; rows left out by --rows show their stored result or "not run"
        if not runs_at(r, scale):
            res = {"not_run": True, "why": f"runs at scale {' / '.join(r.scales or [])} only"}
        else:
            res = results[r.name] if r.name in results else stored_row(*owners[r.name], scale, Path(out_root))
        plot = {k: v for k, v in (("x", r.x), ("series", r.series)) if v is not None}
        if r.same_as is not None:
            plot["shared"] = r.same_as
        if r.kind != "train":
            plot["kind"] = r.kind
        report["rows"].append({"name": r.name, "label": r.label or r.name, "paper": r.paper,
                               "overrides": r.overrides, "seeds_planned": row_seeds(table, r), **plot,
                               **{k: v for k, v in res.items() if k != "name"}})  # a shared run's name is its owner's
    save_json(report, Path(out_root) / f"{name}.json")
    save_text(markdown(report), Path(out_root) / f"{name}.md")
    return report


def shown_path(path: str) -> str:
    """A table file as the reports show it: from ``configs/`` on when it lies in a ``configs/tables``
    folder (so a report does not depend on where the checkout was), else as given."""
    p = Path(path)
    if p.parent.name == "tables" and p.parent.parent.name == "configs":
        return str(Path("configs", "tables", p.name))
    return path


def not_converged_detail(row: dict[str, Any]) -> str:
    """`` (k of n seeds; up to +x pt; falls up to y pt)``: how many of a row's runs did not converge, the
    largest rise over the last quarter of those that still rose and the largest fall of those that
    swung there (points of accuracy; a loss's rise or fall is relative to its value: a fall in %)."""
    runs = row.get("runs") or [row]
    unsettled = [x for x in runs if x.get("converged") is False]
    swung = [x for x in unsettled if x.get("val_swung")]
    rising = [x for x in unsettled if x.get("val_rose", not x.get("val_swung"))]
    rises = [x["val_rise"] for x in rising if isinstance(x.get("val_rise"), int | float)]
    falls = [x["val_fall"] for x in swung if isinstance(x.get("val_fall"), int | float)]
    parts = [f"{len(unsettled)} of {len(runs)} seeds"] if len(runs) > 1 else []
    loss = row.get("metric") in LOWER_IS_BETTER
    if rises and not loss:
        parts.append(f"up to +{max(rises) * 100:.1f} pt")
    if falls:
        parts.append(f"falls up to {max(falls) * 100:.0f}%" if loss else f"falls up to {max(falls) * 100:.1f} pt")
    return f" ({'; '.join(parts)})" if parts else ""


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['title']}", "",
             f"Scale `{report['scale']}` (overrides: `{' '.join(report['scale_overrides']) or 'none'}`); "
             f"from `{shown_path(report['table'])}`.", ""]
    if report["notes"]:
        lines += [report["notes"].strip(), ""]
    lines += ["| row | ours: mean over seeds | between-seed sd | seeds | test-task 95% CI | paper | converged "
              "| best val | tasks | iterations | ms / iteration | train time | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        paper = "" if r.get("paper") is None else f"{r['paper']:g}"
        if r.get("not_run"):
            note = r.get("why") or (f"in progress: {trained_to(r['in_progress'])}" if r.get("in_progress") else "")
            why = f" ({note})" if note else ""
            lines.append(f"| {r['label']} | not run{why} | | | | {paper} |" + " |" * 7)
            continue
        if r.get("failed"):
            lines.append(f"| {r['label']} | failed (see `{r['log']}`) | | | | {paper} |" + " |" * 7)
            continue
        secs = r.get("train_seconds")
        t = f"{secs / 60:.1f} min" if secs is not None else ""
        mem = f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") is not None else ""
        val = "" if r.get("val") is None else f"{r['val']:.4f}"
        its = r.get("iterations")
        n = r.get("n_seeds", 1)
        per = f"{secs / its / n * 1000:.1f}" if secs and its else ""
        sd = f"{r['seed_sd']:.4f}" if n > 1 and "seed_sd" in r else ""
        planned = r.get("seeds_planned", n)
        seeds = f"{n}" if n == planned else f"{n} of {planned}"
        conv = {True: "yes", False: "**no**", None: ""}[r.get("converged") if "converged" in r else None]
        if r.get("converged") is False:
            conv += not_converged_detail(r)
        if r.get("kind") == "upper_bound":
            conv = "n/a"
        lines.append(f"| {r['label']} | {r['mean']:.4f} ({r['metric']}) | {sd} | {seeds} | ± {r['ci95']:.4f} | "
                     f"{paper} | {conv} | {val} | {r.get('tasks', '')} | {its if its is not None else ''} | {per} | "
                     f"{t} | {mem} |")
    shared = [f"{r['label']} = `{r['shared']}`" for r in report["rows"] if r.get("shared")]
    if shared:
        lines += ["", "Runs shared with another table's row (the same config but its name, trained once, in that "
                      "row's directory): " + "; ".join(shared) + "."]
    return "\n".join(lines) + "\n"
