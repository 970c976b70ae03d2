"""``innerloop report``: one Markdown report from the results tables ``innerloop reproduce`` wrote.

For each table it copies the table (our mean over training seeds, the between-seed spread and the
test-task interval beside the paper's figure, convergence, time, memory, scale) and checks the
table's claims (``[[claim]]``: row ``better`` beats row ``than``) with the test of
:mod:`innerloop.experiments.verdict`; the report opens with the verdict counts per paper.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from innerloop.errors import UserError
from innerloop.experiments.checkpoint import save_text
from innerloop.experiments.config import ConfigError
from innerloop.experiments.plot import validation_curves_figure
from innerloop.experiments.plot_cli import draw
from innerloop.experiments.reproduce import markdown
from innerloop.experiments.tables import read_table, resolve_table
from innerloop.experiments.verdict import MIN_SEEDS, check_claim


def run_summary(name: str, report: dict[str, Any]) -> str:
    """Which rows ran, their summed training time and the command that reproduces them."""
    rows = [r for r in report["rows"] if "mean" in r]
    if not rows:
        return f"No row of this table has been run at scale `{report['scale']}`."
    total = len(report["rows"])
    secs = sum(r.get("train_seconds") or 0.0 for r in rows)
    command = f"innerloop reproduce {name}" + ("" if report["scale"] == "cpu" else f" --scale {report['scale']}")
    if len(rows) < total:
        command += f" --rows {' '.join(r['name'] for r in rows)}"
    return (f"Rows run at scale `{report['scale']}`: {len(rows)} of {total}, {secs / 60:.0f} min of training in "
            f"all (the rows' train times summed; testing not included). Reproduced by `{command}`.")


def figure_lines(figures: list[Any], out_dir: Path, failed: dict[str, str] | None = None) -> list[str]:
    """Each figure embedded, or why it is not (``failed``: file → the reason its command gave)."""
    lines = []
    for f in figures:
        path = Path(f.file)
        if failed and f.file in failed:
            lines += ["", f"Figure `{f.file}` not drawn: {failed[f.file]} (`{f.command}`)."]
        elif path.is_file():
            rel = os.path.relpath(path.resolve(), out_dir.resolve())
            caption = f"*{f.caption}* " if f.caption else ""
            lines += ["", f"![{f.caption or path.stem}]({rel})", "", f"{caption}Drawn by `{f.command}`."]
        else:
            lines += ["", f"Figure `{f.file}` not drawn yet (`{f.command}`, or `innerloop report --draw`)."]
    return lines


def draw_figures(figures: list[Any]) -> dict[str, str]:
    """Draw each figure by its ``innerloop plot`` command (run in this process). A figure whose data is
    not there yet (rows not run) is left out with its reason (file → reason); nothing stale is shown."""
    failed = {}
    for f in figures:
        try:
            draw(f.command)
        except UserError as e:
            failed[f.file] = str(e)
    return failed


PAPERS = {"alfa": "ALFA", "kfo": "KFO", "mlplr": "MLPLR", "metamida": "MetaMiDA"}
# what a "no" without a table's `why_not` shows; `innerloop report` also warns about it
UNEXPLAINED = "**not explained yet** (the table file gives no `why_not`)"
VERDICTS = ("yes", "no", "not resolved", "not converged", "not run")
# the "not run" claims with a row that does not run at the table's scale (a dataset or GPU this
# machine lacks): counted apart so that the claims still to train here are visible
ELSEWHERE = "of which: a row runs at another scale only"


def paper_of(table_name: str, title: str = "") -> str:
    """The paper a table's claims count for; our variants of a paper's tables count apart."""
    paper = PAPERS.get(table_name.split("_")[0], "other")
    if table_name.endswith("_variant") or "variant" in title.lower():
        return f"{paper} (our variants)" if paper != "other" else "other"
    return paper


def table_section(name: str, report: dict[str, Any], table_file: Path | None, out_dir: Path | None = None,
                  draw: bool = False) -> tuple[str, list[str]]:
    """The table's Markdown section and the verdicts of its claims (with one :data:`ELSEWHERE` more for each
    claim not run because a row runs at another scale only)."""
    out = [markdown(report), run_summary(name, report)]
    table = read_table(table_file) if table_file is not None and table_file.is_file() else None
    claims = table.claim if table is not None else []
    verdicts = []
    if claims:
        rows = {r["name"]: r for r in report["rows"]}
        out += ["", "| the paper's claim | reproduced? | ours |", "|---|---|---|"]
        whys = []
        for c in claims:
            verdict, detail = check_claim(rows, c.better, c.than)
            verdicts.append(verdict)
            if verdict == "not run" and any(rows.get(n, {}).get("why") for n in (c.better, c.than)):
                verdicts.append(ELSEWHERE)
            out.append(f"| {c.text} | {verdict} | {detail} |")
            if verdict == "no":
                whys.append(f"- *{c.text}*: {c.why_not or UNEXPLAINED}")
        if whys:
            out += ["", "Why each \"no\":", "", *whys]
    if table is not None and table.figure:
        failed = draw_figures(table.figure) if draw else {}
        out += figure_lines(table.figure, out_dir or Path.cwd(), failed)
    out += curves_lines(name, report, out_dir or Path.cwd(), draw)
    return "\n".join(out) + "\n", verdicts


def curves_lines(name: str, report: dict[str, Any], out_dir: Path, draw: bool) -> list[str]:
    """The table's validation-curve figure (``figures/<table>_curves.png`` beside the report, drawn by
    ``--draw``), which shows why a row is or is not converged."""
    path = out_dir / "figures" / f"{name}_curves.png"
    if draw:
        if validation_curves_figure(report, path) is None:
            return []
    if not path.is_file():
        return []
    return ["", f"![validation curves of {name}](figures/{path.name})", "",
            "*Validation curves, one line per training seed (dotted: the run did not converge).*"]


def count_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The verdict counts per paper as a Markdown table."""
    columns = (*VERDICTS, ELSEWHERE)
    lines = ["| paper | " + " | ".join(columns) + " | claims |", "|---" * (len(columns) + 2) + "|"]
    total = {v: sum(c.get(v, 0) for c in counts.values()) for v in columns}
    for paper, c in [*((p, counts.get(p)) for p in [*PAPERS.values(), *(f"{p} (our variants)" for p in PAPERS.values()),
                                                     "other"]), ("all", total)]:
        if c:
            lines.append(f"| {paper} | " + " | ".join(str(c.get(v, 0)) for v in columns)
                         + f" | {sum(c.get(v, 0) for v in VERDICTS)} |")
    return lines


def write_report(names: list[str], results_root: str | Path, out: str | Path, *, command: str,
                 draw: bool = False) -> Path:
    root = Path(results_root)
    if not names:
        names = sorted(p.stem for p in root.glob("*.json"))
    if not names:
        raise ConfigError(f"no results tables (*.json) under {root}; run `innerloop reproduce TABLE` first")
    tables: list[tuple[str, dict[str, Any], Path | None]] = []
    for name in names:  # every table is checked before anything is drawn or written
        res = root / f"{name}.json"
        if not res.is_file():
            raise ConfigError(f"no results for table {name!r}: {res} does not exist (run `innerloop reproduce {name}`)")
        report = json.loads(res.read_text())
        table_file: Path | None = Path(report.get("table", ""))
        if not table_file.is_file():
            try:
                table_file = resolve_table(name)
            except ConfigError:
                table_file = None
        tables.append((name, report, table_file))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sections, counts = [], {}
    for name, report, table_file in tables:
        text, verdicts = table_section(name, report, table_file, path.parent, draw)
        sections.append(text)
        if UNEXPLAINED in text:
            print(f"innerloop report: warning: table {name} has a \"no\" verdict with no why_not in its table file",
                  file=sys.stderr)
        c = counts.setdefault(paper_of(name, report.get("title", "")), {})
        for v in verdicts:
            c[v] = c.get(v, 0) + 1
    parts = [
        "# Results",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} from the results tables under `{root}/`, "
        "each written by `innerloop reproduce <table>` (the table file and its scale are named under each "
        "heading; rows not run say so).",
        "",
        "**How to read a row.** A row is trained once per training seed (`train.seed` = 0, 1, 2, ...; the "
        "seeds column) and every run is tested on the same fixed test tasks. *ours* is the mean over seeds, "
        "*between-seed sd* the sample standard deviation of the seeds' means (the variation between training "
        "runs), *test-task 95% CI* the mean over seeds of each run's 1.96·std/√N over its test tasks (the "
        "sampling of test tasks only). *converged* says whether every seed's validation metric had settled: "
        "the least-squares line through the validation points of the last quarter of the iterations rises "
        "by at most half a point of accuracy (2% for MSE and losses) over that quarter, and no validation "
        "point of that quarter lies more than 3 points of accuracy (25% for MSE and losses) below the best "
        "point before it and more than 3 times its own validation interval (a swing); a **no** says how "
        "many seeds did not settle, the largest rise and the largest fall.",
        "",
        f"**How a claim is judged.** Welch's 95% interval for the difference of the two rows' seed means, "
        f"from the between-seed variation (Welch–Satterthwaite degrees of freedom, rounded down): *yes* / *no* "
        f"when it excludes 0, *not resolved* when it contains 0 or when either row has fewer than {MIN_SEEDS} "
        f"seeds, *not converged* when a run of either row did not converge (its difference is shown, not "
        f"judged), *not run* when a row has no result (at the table's meta-steps: a row still training says "
        f"how far its runs got); the last column counts the claims not run because "
        f"a row runs at another scale only (a dataset or a GPU this machine does not have), the rest wait "
        f"for training here. Figures are drawn by the `innerloop plot` command under "
        f"each (`innerloop report --draw` runs them all).",
        "",
        "Claims per paper:",
        "",
        *count_lines(counts),
        "",
        *sections,
    ]
    save_text("\n".join(parts), path)
    return path
