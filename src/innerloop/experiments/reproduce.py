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

Each row trains in its own process (``python -m innerloop train``), so its wall-clock and peak
memory are its own; a row may name its own ``base``. Finished rows (``test.json`` present) are
skipped; interrupted ones resume.
Results go to ``results/<table>/<row>/`` (run directories), ``results/<table>.json`` and
``results/<table>.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from innerloop.experiments.checkpoint import save_json
from innerloop.experiments.config import ConfigError, load


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    label: str = ""
    base: str | None = None  # another base config for this row (relative to the table file)
    overrides: list[str] = []
    paper: float | None = None


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    base: str
    scale: dict[str, list[str]] = Field(default_factory=lambda: {"paper": []})
    row: list[Row]
    notes: str = ""


def read_table(path: str | Path) -> Table:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table file not found: {p}")
    try:
        return Table.model_validate(tomllib.loads(p.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise ConfigError(f"bad table file {p}: {e}".replace("\n", " ")) from None


def _row_overrides(table: Table, row: Row, scale: str) -> list[str]:
    return [*table.scale[scale], *row.overrides, f"name={row.name}"]


def run_row(table_path: Path, table: Table, row: Row, scale: str, out: Path, threads: int | None = None
            ) -> dict[str, Any]:
    run_dir = out / row.name
    if (run_dir / "test.json").exists():
        res = json.loads((run_dir / "test.json").read_text())
        res["skipped"] = True
        return res
    base = (table_path.parent / (row.base or table.base)).resolve()
    cmd = [sys.executable, "-m", "innerloop", "train", str(base), "--out", str(run_dir), "--no-progress",
           *_row_overrides(table, row, scale)]
    if (run_dir / "last.pt").exists():
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
    table_path = Path(table_path)
    table = read_table(table_path)
    if scale not in table.scale:
        raise ConfigError(f"{table_path} has no scale {scale!r} (it has: {', '.join(table.scale)})")
    rows = [r for r in table.row if not only or r.name in only]
    # validate every row's config before running anything
    for r in rows:
        load((table_path.parent / (r.base or table.base)).resolve(), _row_overrides(table, r, scale))
    name = table_path.stem
    out = Path(out_root) / name
    threads = 1 if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        results = dict(zip([r.name for r in rows], ex.map(lambda r: run_row(table_path, table, r, scale, out, threads),
                                                            rows), strict=True))
    report = {"title": table.title, "table": str(table_path), "scale": scale,
              "scale_overrides": table.scale[scale], "notes": table.notes, "rows": []}
    for r in table.row:  # every row of the table; rows left out by --rows show their stored result or "not run"
        if r.name in results:
            res = results[r.name]
        elif (out / r.name / "test.json").exists():
            res = {**json.loads((out / r.name / "test.json").read_text()), "skipped": True}
        else:
            res = {"not_run": True}
        report["rows"].append({"name": r.name, "label": r.label or r.name, "paper": r.paper,
                               "overrides": r.overrides, **res})
    save_json(report, Path(out_root) / f"{name}.json")
    (Path(out_root) / f"{name}.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['title']}", "",
             f"Scale `{report['scale']}` (overrides: `{' '.join(report['scale_overrides']) or 'none'}`); "
             f"from `{report['table']}`.", ""]
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
