"""``innerloop reproduce TABLE --plan``: what is left to train in a table, and about how long it takes.

Nothing is trained or written. Each run of each row (one per training seed) is listed with its
state (:func:`~innerloop.experiments.reproduce.run_state`), its iteration and the iterations its
row asks for. The iteration of a run still to train is the one it resumes from: its ``last.pt``'s, or
0 without one (a fresh checkout of committed results has no checkpoints: such a run trains again from
the start); a finished run shows its last logged training row. Speed is the run's own clock over its
iterations (``seconds`` in ``metrics.jsonl``, validation included), or else the mean of the other
seeds of the row that have one; a run with neither is "unknown". Times are one run after another
on this machine's speed when the runs were measured: with ``--jobs N`` the wall clock is about 1/N
of the total if the machine has the cores. An upper-bound row (``kind = "upper_bound"``) is
counted in test tasks instead of iterations, marked ``[tasks]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from innerloop.experiments.checkpoint import CheckpointError, load_checkpoint
from innerloop.experiments.config import ConfigError
from innerloop.experiments.reproduce import progress, run_dirs, run_state
from innerloop.experiments.tables import read_table, resolve_table, row_config, runs_at, shared_owner
from innerloop.experiments.upper_bound import partial_progress


@dataclass
class RunPlan:
    row: str
    seed: int | None
    state: str  # done / partial / extend / new / stale, or "scale" for a row that does not run at this scale
    iteration: int
    iterations: int
    seconds_per_iteration: float | None
    unit: str = "iterations"  # "tasks" for an upper-bound row

    @property
    def remaining(self) -> int:
        if self.state in ("done", "scale"):
            return 0
        if self.state == "stale":  # set aside and trained again from the start (--restart-stale)
            return self.iterations
        return max(0, self.iterations - self.iteration)

    @property
    def seconds_left(self) -> float | None:
        if self.remaining == 0:
            return 0.0
        return None if self.seconds_per_iteration is None else self.remaining * self.seconds_per_iteration


def resume_point(run_dir: Path) -> int:
    """The iteration a resume of the run starts from: its ``last.pt``'s, 0 without a valid one."""
    try:
        return load_checkpoint(run_dir / "last.pt", "last")["iteration"]
    except CheckpointError:
        return 0


def plan(table_path: str | Path, *, scale: str = "cpu", out_root: str | Path = "results",
         only: list[str] | None = None) -> list[RunPlan]:
    table_path = resolve_table(table_path)
    table = read_table(table_path)
    unknown = sorted(set(only or []) - {r.name for r in table.row})
    if unknown:
        raise ConfigError(f"{table_path}: no row named {', '.join(unknown)} "
                          f"(rows: {', '.join(r.name for r in table.row)})")
    if scale not in table.scale:
        raise ConfigError(f"{table_path} has no scale {scale!r} (it has: {', '.join(table.scale)})")
    runs: list[RunPlan] = []
    for row in table.row:
        if only and row.name not in only:
            continue
        if not runs_at(row, scale):
            runs.append(RunPlan(row.name, None, "scale", 0, 0, None))
            continue
        cfg = row_config(table_path, table, row, scale)
        if row.kind == "upper_bound":  # counted in test tasks, not meta-iterations
            target = (row.upper_bound.tasks if row.upper_bound else None) or cfg.eval.tasks
            unit, count, mark = "tasks", partial_progress, " [tasks]"
        else:
            target, unit, count, mark = cfg.train.iterations, "iterations", progress, ""
        owner_path, owner_table, owner = shared_owner(table_path, table, row, scale)
        mine = []
        for seed, d in run_dirs(Path(out_root) / owner_path.stem, owner_table, owner):
            state, _ = run_state(owner_path, owner_table, owner, scale, seed, d)
            it, speed = count(d) if state != "new" else (0, None)
            if unit == "iterations" and state in ("partial", "extend"):
                it = resume_point(d)
            elif state == "done":  # finished at the target, whether or not its log was kept
                it = target
            shown = (row.name if row.same_as is None else f"{row.name} (= {row.same_as})") + mark
            mine.append(RunPlan(shown, seed, state, it, target, speed, unit))
        known = [r.seconds_per_iteration for r in mine if r.seconds_per_iteration is not None]
        for r in mine:
            if r.seconds_per_iteration is None and known:
                r.seconds_per_iteration = sum(known) / len(known)
        runs += mine
    return runs


def _hours(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 3600:.1f} h"


def plan_text(runs: list[RunPlan], scale: str) -> str:
    lines = ["| row | seed | state | iteration | of | s / iteration | left |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.state == "scale":
            lines.append(f"| {r.row} | | runs at another scale than {scale} | | | | |")
            continue
        speed = "" if r.seconds_per_iteration is None else f"{r.seconds_per_iteration:.2f}"
        seed = "" if r.seed is None else str(r.seed)
        lines.append(f"| {r.row} | {seed} | {r.state} | {r.iteration} | {r.iterations} | {speed} | "
                     f"{_hours(r.seconds_left)} |")
    todo = [r for r in runs if r.remaining]
    known = sum(r.seconds_left for r in todo if r.seconds_left is not None)
    unknown = sum(1 for r in todo if r.seconds_left is None)
    amounts = [f"{sum(r.remaining for r in todo if r.unit == u)} {u}" for u in ("iterations", "tasks")
               if any(r.unit == u for r in todo)]
    lines += ["", f"{len(todo)} run(s) to train, {' and '.join(amounts) or '0 iterations'}: "
              f"{known / 3600:.1f} h one after another for those with a measured speed"
              + (f", {unknown} with no speed yet" if unknown else "") + "."]
    return "\n".join(lines) + "\n"
