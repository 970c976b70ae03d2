"""``innerloop reproduce TABLE``: run every row of a table file, then write a results report.

A table file (TOML) names a base config, per-scale overrides and rows::

    title = "ALFA Table 8: sine regression, test MSE"
    base = "../sine_maml.toml"              # relative to the table file
    [scale]
    cpu = ["train.iterations=20000"]        # what the cpu scale changes (say why in a comment)
    paper = []
    [[row]]
    name = "maml-2x40-k5"                   # run directory name
    label = "MAML, 1-40-40-1, K=5"
    overrides = ["task.k_shot=5"]
    paper = 1.24                            # the paper's figure (optional)
    scale = {cpu = ["model.widths=[16, 32, 64, 128]"]}   # this row's own per-scale overrides (optional)
    x = 5                                   # for `innerloop plot table`: the row's x value (optional)
    series = "MAML"                         # for `innerloop plot table`: its line / bar group (optional)

A row with ``kind = "upper_bound"`` is not meta-trained: ``innerloop upper-bound`` trains the row's
model on each test task alone (options in ``upper_bound = {train_points = 2000, steps = 1000}``;
``init`` names another row whose learned θ0 to start from; these rows run after the others).
The table's optional ``x_label`` names the x axis of its plot. ``[[claim]]`` entries (``text``,
``better``, ``than``: two row names) are the paper's claims that ``innerloop report`` checks, and
``[[figure]]`` entries (``file``, ``caption``, ``command = "innerloop plot ... --out FILE"``) the
figures it shows (``innerloop report --draw`` runs their commands first).

``innerloop reproduce NAME`` also takes a bare table name: ``configs/tables/NAME.toml`` (looked up
from the working directory, then from the source tree).

Each row trains in its own process (``python -m innerloop train``), so its wall-clock and peak
memory are its own; a row may name its own ``base``. Finished rows (``test.json`` present) are
skipped; interrupted ones resume.
Results go to ``results/<table>/<row>/`` (run directories), ``results/<table>.json`` and
``results/<table>.md``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from innerloop.experiments.checkpoint import save_json
from innerloop.experiments.config import Config, ConfigError, load
from innerloop.experiments.upper_bound import UpperBoundOptions


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    label: str = ""
    base: str | None = None  # another base config for this row (relative to the table file)
    overrides: list[str] = []
    scale: dict[str, list[str]] = {}  # per-scale overrides of this row, applied after its overrides
    paper: float | None = None
    kind: Literal["train", "upper_bound"] = "train"  # upper_bound: `innerloop upper-bound`, no meta-training
    upper_bound: UpperBoundOptions | None = None  # options of an upper_bound row (init: another row's name)
    x: FiniteFloat | None = None  # for plots: a numeric attribute of the row (conv layers, classes, ...)
    series: str | None = None  # for plots: the line / bar group of the row


class Claim(BaseModel):
    """A paper's claim that one row beats another, checked by ``innerloop report``."""

    model_config = ConfigDict(extra="forbid")
    text: str  # e.g. "ALFA+MAML beats MAML (K=5)"
    better: str  # the row claimed to be better
    than: str  # the row it is claimed to beat


class Figure(BaseModel):
    """A figure drawn from this table's results by an ``innerloop plot`` command, shown by ``innerloop report``."""

    model_config = ConfigDict(extra="forbid")
    file: str  # the PNG, relative to the working directory the commands run in (the repository root)
    command: str  # the `innerloop plot ...` command that draws it (run by `innerloop report --draw`)
    caption: str = ""


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    base: str
    scale: dict[str, list[str]] = Field(default_factory=lambda: {"paper": []})
    row: list[Row]
    notes: str = ""
    x_label: str = ""  # for plots: what the rows' x is
    claim: list[Claim] = []  # claims of the paper, checked by `innerloop report`
    figure: list[Figure] = []  # figures drawn from the results, shown by `innerloop report`


def read_table(path: str | Path) -> Table:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table file not found: {p}")
    try:
        table = Table.model_validate(tomllib.loads(p.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise ConfigError(f"bad table file {p}: {e}".replace("\n", " ")) from None
    for r in table.row:
        unknown = sorted(set(r.scale) - set(table.scale))
        if unknown:
            raise ConfigError(f"bad table file {p}: row {r.name!r} has overrides for scale(s) {', '.join(unknown)} "
                              f"that the table does not define (it has: {', '.join(table.scale)})")
    _check_rows(p, table)
    names = {r.name for r in table.row}
    for c in table.claim:
        missing = [n for n in (c.better, c.than) if n not in names]
        if missing:
            raise ConfigError(f"bad table file {p}: claim {c.text!r} names unknown row(s) {', '.join(missing)} "
                              f"(rows: {', '.join(sorted(names))})")
    for f in table.figure:
        words = shlex.split(f.command)  # as `innerloop report --draw` will split it
        if words[:2] != ["innerloop", "plot"] or "--out" not in words or f.file not in words:
            raise ConfigError(f"bad table file {p}: figure {f.file!r}: its command must be `innerloop plot ... "
                              f"--out {f.file}` (got {f.command!r})")
    return table


def _check_rows(p: Path, table: Table) -> None:
    """Row kinds, upper-bound options and plot coordinates."""
    kinds = {r.name: r.kind for r in table.row}
    seen: dict[tuple[str | None, float], str] = {}
    for r in table.row:
        if r.upper_bound is not None and r.kind != "upper_bound":
            raise ConfigError(f"bad table file {p}: row {r.name!r} has upper_bound options but kind = {r.kind!r} "
                              f"(set kind = \"upper_bound\")")
        init = r.upper_bound.init if r.upper_bound is not None else None
        if init is not None and kinds.get(init) != "train":
            raise ConfigError(f"bad table file {p}: row {r.name!r}: upper_bound.init = {init!r} is not a trained "
                              f"row of this table (rows: {', '.join(n for n, k in kinds.items() if k == 'train')})")
        if r.x is not None:
            other = seen.setdefault((r.series, r.x), r.name)
            if other != r.name:
                raise ConfigError(f"bad table file {p}: rows {other!r} and {r.name!r} have the same x = {r.x:g} in "
                                  f"series {r.series!r}")


def resolve_table(name: str | Path) -> Path:
    """A table file path, or a bare table name looked up as ``configs/tables/NAME.toml`` in the working
    directory, then in the source tree."""
    p = Path(name)
    if p.is_file() or p.suffix or len(p.parts) > 1:
        return p
    roots = [Path.cwd(), Path(__file__).resolve().parents[3]]
    candidates = list(dict.fromkeys(r / "configs" / "tables" / f"{p.name}.toml" for r in roots))
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({t.stem for c in candidates if c.parent.is_dir() for t in c.parent.glob("*.toml")})
    raise ConfigError(f"no table named {str(name)!r}: looked for {', '.join(map(str, candidates))}"
                      + (f" (tables: {', '.join(known)})" if known else ""))


def _row_overrides(table: Table, row: Row, scale: str) -> list[str]:
    return [*table.scale[scale], *row.overrides, *row.scale.get(scale, []), f"name={row.name}"]


def row_base(table_path: Path, table: Table, row: Row) -> Path:
    """The base config file of a row (its own ``base`` or the table's, relative to the table file)."""
    return (Path(table_path).parent / (row.base or table.base)).resolve()


def row_config(table_path: Path, table: Table, row: Row, scale: str) -> Config:
    """The validated config a row runs at ``scale`` (nothing is built or trained)."""
    return load(row_base(table_path, table, row), _row_overrides(table, row, scale))


def run_row(table_path: Path, table: Table, row: Row, scale: str, out: Path, threads: int | None = None
            ) -> dict[str, Any]:
    run_dir = out / row.name
    if (run_dir / "test.json").exists():
        res = json.loads((run_dir / "test.json").read_text())
        res["skipped"] = True
        return res
    base = row_base(table_path, table, row)
    if row.kind == "upper_bound":
        opts = row.upper_bound or UpperBoundOptions()
        init = out / opts.init if opts.init is not None else None
        cmd = [sys.executable, "-m", "innerloop", "upper-bound", str(base), "--out", str(run_dir), "--no-progress",
               *opts.cli_args(init), *_row_overrides(table, row, scale)]
    else:
        cmd = [sys.executable, "-m", "innerloop", "train", str(base), "--out", str(run_dir), "--no-progress",
               *_row_overrides(table, row, scale)]
    if (run_dir / "config.json").exists() and row.kind == "train":  # started before: continue it
        cmd.append("--resume")
    log = run_dir.parent / f"{row.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0 or not (run_dir / "test.json").exists():
        return {"failed": True, "log": str(log), "returncode": r.returncode}
    return json.loads((run_dir / "test.json").read_text())


def reproduce(table_path: str | Path, *, scale: str = "cpu", out_root: str | Path = "results", jobs: int = 1,
              only: list[str] | None = None) -> dict[str, Any]:
    table_path = resolve_table(table_path)
    table = read_table(table_path)
    if scale not in table.scale:
        raise ConfigError(f"{table_path} has no scale {scale!r} (it has: {', '.join(table.scale)})")
    rows = [r for r in table.row if not only or r.name in only]
    # validate every row's config before running anything
    for r in rows:
        row_config(table_path, table, r, scale)
    name = table_path.stem
    out = Path(out_root) / name
    threads = 1 if jobs > 1 else None
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        # upper-bound rows may start from a trained row's θ0, so they run once the trained rows are done
        for phase in ([r for r in rows if r.kind == "train"], [r for r in rows if r.kind != "train"]):
            done = ex.map(lambda r: run_row(table_path, table, r, scale, out, threads), phase)
            results.update(zip([r.name for r in phase], done, strict=True))
    report = {"title": table.title, "table": str(table_path), "scale": scale,
              "scale_overrides": table.scale[scale], "notes": table.notes, "rows": []}
    if table.x_label:
        report["x_label"] = table.x_label
    for r in table.row:  # every row of the table; rows left out by --rows show their stored result or "not run"
        if r.name in results:
            res = results[r.name]
        elif (out / r.name / "test.json").exists():
            res = {**json.loads((out / r.name / "test.json").read_text()), "skipped": True}
        else:
            res = {"not_run": True}
        plot = {k: v for k, v in (("x", r.x), ("series", r.series)) if v is not None}
        if r.kind != "train":
            plot["kind"] = r.kind
        report["rows"].append({"name": r.name, "label": r.label or r.name, "paper": r.paper,
                               "overrides": r.overrides, **plot, **res})
    save_json(report, Path(out_root) / f"{name}.json")
    (Path(out_root) / f"{name}.md").write_text(markdown(report))
    return report


def shown_path(path: str) -> str:
    """A table file as the reports show it: from ``configs/`` on when it lies in a ``configs/tables``
    folder (so a report does not depend on where the checkout was), else as given."""
    p = Path(path)
    if p.parent.name == "tables" and p.parent.parent.name == "configs":
        return str(Path("configs", "tables", p.name))
    return path


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['title']}", "",
             f"Scale `{report['scale']}` (overrides: `{' '.join(report['scale_overrides']) or 'none'}`); "
             f"from `{shown_path(report['table'])}`.", ""]
    if report["notes"]:
        lines += [report["notes"].strip(), ""]
    lines += ["| row | ours (mean ± 95% CI) | paper | best val | tasks | iterations | ms / iteration | train time "
              "| peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r.get("not_run"):
            paper = "" if r["paper"] is None else f"{r['paper']:g}"
            lines.append(f"| {r['label']} | not run yet | {paper} | | | | | | |")
            continue
        if r.get("failed"):
            lines.append(f"| {r['label']} | failed (see `{r['log']}`) | {r['paper'] or ''} | | | | | | |")
            continue
        secs = r.get("train_seconds")
        t = f"{secs / 60:.1f} min" if secs is not None else ""
        mem = f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") is not None else ""
        paper = "" if r["paper"] is None else f"{r['paper']:g}"
        val = "" if r.get("val") is None else f"{r['val']:.4f}"
        its = r.get("iterations")
        per = f"{secs / its * 1000:.1f}" if secs and its else ""
        lines.append(f"| {r['label']} | {r['mean']:.4f} ± {r['ci95']:.4f} ({r['metric']}) | {paper} | {val} | "
                     f"{r['tasks']} | {its if its is not None else ''} | {per} | {t} | {mem} |")
    return "\n".join(lines) + "\n"
