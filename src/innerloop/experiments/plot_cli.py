"""The ``innerloop plot`` sub-commands: their arguments and what runs them, used by the CLI and by
``innerloop report --draw`` (which reads a figure's command from a table file and runs it here)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from innerloop.experiments import plot
from innerloop.experiments.config import ConfigError


def add_plot_parser(sub) -> argparse.ArgumentParser:
    """Add ``plot`` with its sub-commands to ``sub`` (an ``add_subparsers`` object); returns its parser."""
    pl = sub.add_parser("plot", help="draw PNG figures from runs and results tables",
                        description="Draw PNG figures (matplotlib) from recorded runs and results tables.")
    pl_sub = pl.add_subparsers(dest="figure", required=True)
    runs_help = ("run directories, or directories of runs such as results/<table>/ (rows labelled as in "
                 "results/<table>.json)")
    pt = pl_sub.add_parser("trace", help="per-step values a rule reports: ALFA α/β per tensor, MLPLR λ and "
                           "lr_min-branch share, KFC scale",
                           description="Plot the per-inner-step trace of each run's test.json (means over test "
                           "tasks), one panel per quantity and one line per adapted tensor.")
    pt.add_argument("runs", nargs="+", metavar="RUN_DIR", help=runs_help)
    pt.add_argument("--groups", nargs="+", metavar="NAME",
                    help="trace groups to draw, e.g. alpha beta, lr lr_min_branch, scale, support_grad_norm "
                    "(default: all the rule reports)")
    pic = pl_sub.add_parser("inner-curves", help="support loss and support-gradient norm per inner update on "
                            "test tasks, several runs on one axes",
                            description="Support loss and support-gradient norm after 0, 1, ... inner updates, "
                            "mean over the test tasks, one line per run (MetaMiDA Fig. 1 style). Without --steps "
                            "the values come from test.json (the run's evaluation steps); with --steps N the best "
                            "checkpoint is re-evaluated (test.json is not rewritten).")
    pic.add_argument("runs", nargs="+", metavar="RUN_DIR", help=runs_help)
    pic.add_argument("--linear-y", action="store_true", help="linear y axes (default logarithmic)")
    for sp in (pt, pic):
        sp.add_argument("--steps", type=int, metavar="N",
                        help="re-evaluate each run's best checkpoint for curves to N inner updates (N + 1 inner "
                        "steps, the last one's support loss and gradient being the values after N updates)"
                        if sp is pic else "re-evaluate each run's best checkpoint with N inner steps")
        sp.add_argument("--tasks", type=int, help="test tasks for the re-evaluation (default: eval.tasks)")
        sp.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run")
    ptab = pl_sub.add_parser("table", help="a metric against a numeric row attribute from results/<table>.json",
                             description="Plot a results table written by `innerloop reproduce`: the test "
                             "metric (mean ± 95% CI) against the rows' x (a table row's optional `x = ...`), one "
                             "line or bar group per `series`.")
    ptab.add_argument("table", help="results/<table>.json")
    ptab.add_argument("--kind", choices=["line", "bar"], default="line",
                      help="lines with error bars (default), or grouped bars (categories: the x values, or the "
                      "row labels when no row has one)")
    ptab.add_argument("--x", default="x", help="numeric row attribute on the x axis (default x)")
    ptab.add_argument("--y", default="mean", help="row attribute on the y axis (default mean, with its 95%% CI)")
    ptab.add_argument("--series", default="series", help="row attribute naming the line (default series)")
    ptab.add_argument("--paper", action="store_true", help="also draw the rows' paper figures")
    for sp in (pt, pic, ptab):
        sp.add_argument("--out", required=True, metavar="FIG.png", help="output PNG file")
        sp.add_argument("--title", help="figure title")
    return pl


def run_plot(args: argparse.Namespace) -> Path:
    """Draw the figure ``args`` (parsed by :func:`add_plot_parser`'s parser) names; the PNG written."""
    if args.figure == "table":
        return plot.table_figure(args.table, args.out, kind=args.kind, x=args.x, y=args.y, series=args.series,
                                 paper=args.paper, title=args.title)
    for flag in ("steps", "tasks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    runs = plot.find_runs(args.runs, args.labels)
    if args.figure == "trace":
        return plot.trace_figure(runs, args.out, groups=args.groups, steps=args.steps, tasks=args.tasks,
                                 title=args.title)
    return plot.inner_curves_figure(runs, args.out, steps=args.steps, tasks=args.tasks, logy=not args.linear_y,
                                    title=args.title)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a table file's bad command is the user's error, not an exit
        raise ConfigError(f"plot command: {message}")


def draw(command: str) -> Path:
    """Run an ``innerloop plot ...`` command line (a table's ``[[figure]]`` command) in this process."""
    words = shlex.split(command)
    if words[:2] != ["innerloop", "plot"]:
        raise ConfigError(f"not an `innerloop plot` command: {command!r}")
    parser = _Parser(prog="innerloop")
    add_plot_parser(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    return run_plot(parser.parse_args(words[1:]))
