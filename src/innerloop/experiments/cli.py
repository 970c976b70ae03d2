"""Command line: ``innerloop train | eval | config | reproduce | report | upper-bound | plot | demo | data``.

Every failure is one line on stderr, never a traceback, with the exit status saying what kind:
2 for the user's input (usage, config, paths, data, checkpoints), 1 at run time (training diverged,
an unexpected error), 130 / 143 when stopped by SIGINT / SIGTERM (``train`` first saves ``last.pt``).
``INNERLOOP_DEBUG=1`` shows the traceback of an unexpected error. What each subcommand does is in
:mod:`innerloop.experiments.commands`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from innerloop import __version__, plugins
from innerloop.data.images.check import MAX_IMAGE_PROBLEMS
from innerloop.errors import UserError
from innerloop.experiments.commands import (
    cmd_config,
    cmd_data_check,
    cmd_demo,
    cmd_eval,
    cmd_plot,
    cmd_report,
    cmd_reproduce,
    cmd_train,
    cmd_upper_bound,
    say,
)
from innerloop.experiments.plot_cli import add_plot_parser
from innerloop.experiments.stop import Stop
from innerloop.experiments.train import TrainingDiverged
from innerloop.rules import RULES


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="innerloop",
        description="Gradient-based meta-learning with learned inner-loop update rules.",
        epilog="Config overrides are section.key=value (or --section.key=value), e.g. rule.lr=0.05.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a plugin module first (its rules, models, datasets ... become valid names in "
                   "configs); repeatable. Installed packages' 'innerloop.plugins' entry points load anyway")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a run from a config file, then test it",
                       usage="innerloop train [-h] [--out OUT] [--resume | --overwrite] [--no-progress] [--quiet] "
                       "[--device DEVICE] config [section.key=value ...]",
                       description="Meta-train from CONFIG (TOML or JSON) plus overrides; validate, "
                       "checkpoint and finally test on fixed tasks. One process writes a run directory at a "
                       "time. Ctrl-C (SIGINT) or SIGTERM finishes the current iteration, saves last.pt and exits "
                       "130 / 143; --resume then continues exactly as if uninterrupted.",
                       epilog="Overrides are section.key=value with TOML values, e.g. rule.name=meta_sgd "
                       "model.hidden=[80,80,80] train.iterations=5000. Sections: task, model, rule, "
                       "algorithm, train, eval. Rules: " + ", ".join(sorted(RULES)) + ". Metric sinks besides "
                       "metrics.jsonl: 'train.log=[\"csv\", \"tensorboard\"]' (metrics.csv, tensorboard/; "
                       "see docs/runs.md). `innerloop config CONFIG ...` prints the resolved config. "
                       "Several processes: "
                       "torchrun --nproc-per-node N -m innerloop train CONFIG ... splits each meta-batch "
                       "(train.meta_batch must be a multiple of N) and validation/test tasks across them; "
                       "rank 0 writes the run directory.")
    t.add_argument("config", help="config file (.toml or .json)")
    t.add_argument("--out", help="run directory (default: runs/<name>)")
    how = t.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt (only "
                     "train.iterations, train.device and train.log may change; iterations not below what is done)")
    how.add_argument("--overwrite", action="store_true", help="start again in --out, deleting the run there "
                     "(without it, a fresh run needs an empty or new --out)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors (no progress bar, no "
                   "result table)")
    t.add_argument("--device", help="where to train: cpu, cuda, cuda:N, auto (cuda when available); sets "
                   "train.device")
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (file + overrides, validated, with every default)",
                       usage="innerloop config [-h] [--json] [config] [section.key=value ...]",
                       description="Validate CONFIG plus overrides as train would and print the full config, "
                       "every default filled in, as TOML (or JSON): what train would store in config.json. Keys "
                       "whose value is unset (null) are listed in a comment, since TOML has no null. An unknown "
                       "key or a wrong value is one line, exit 2.")
    c.add_argument("config", nargs="?", help="config file (.toml or .json); none: the defaults")
    c.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    c.set_defaults(fn=cmd_config)

    e = sub.add_parser("eval", help="test a run directory on fixed tasks",
                       description="Rebuild a run from RUN_DIR/config.json and test its best checkpoint. The "
                       "result goes to RUN_DIR/eval-CHECKPOINT-stepsS-tasksN.json, or with --dataset to "
                       "RUN_DIR/eval-DATASET-CHECKPOINT-stepsS-tasksN.json (test.json is train's and is never "
                       "touched).")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, help="number of test tasks, at least 1 (default: eval.tasks of the run)")
    e.add_argument("--steps", type=int, help="inner steps, at least 1 (default: algorithm.eval_inner_steps)")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--no-write", action="store_true", help="only print the result")
    e.add_argument("--dataset", help="test on this image dataset instead of the run's (cross-domain), e.g. cub; "
                   "its test split, with the run's way, shot and query")
    e.add_argument("--root", help="the data root of --dataset (default: $INNERLOOP_DATA, else ./data)")
    e.add_argument("--split-file", help="class split file (TOML) of --dataset")
    e.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    e.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the run's train.device)")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("reproduce", help="run every row of a table file and write a results report",
                       description="Run the rows of TABLE (skipping finished ones, resuming interrupted "
                       "ones) and write results/<table>.json and results/<table>.md.")
    r.add_argument("table", help="table file (TOML), e.g. configs/tables/alfa_table8.toml, or a bare "
                   "table name (alfa_table8) for configs/tables/NAME.toml")
    r.add_argument("--scale", default="cpu", help="which scale's overrides to apply (default cpu)")
    r.add_argument("--out", default="results", help="results root (default results/)")
    r.add_argument("--jobs", type=int, default=1, help="rows trained at once, at least 1 (each with 1 thread when "
                   "> 1)")
    r.add_argument("--rows", nargs="+", help="only these row names")
    r.add_argument("--collect", action="store_true", help="train nothing: rewrite results/<table>.json and .md "
                   "from the finished runs on disk (after a table file's notes or rows changed)")
    r.add_argument("--plan", action="store_true", help="train nothing: list each run's state, iterations left and "
                   "the time they take at the speed measured so far")
    r.add_argument("--smoke", action="store_true", help="one meta-step per row, one seed, 2 validation and 2 "
                   "test tasks: check that the rows build and run (write to a scratch --out)")
    r.add_argument("--restart-stale", action="store_true", help="runs whose stored config differs from the "
                   "table's (other than more iterations, which resumes them) are renamed *.staleN and run again; "
                   "without it such runs stop the command before anything runs")
    r.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors (no report on stdout)")
    r.add_argument("--device", help="where every run trains: cpu, cuda, cuda:N, auto (sets train.device; not "
                   "part of what makes a run stale)")
    r.set_defaults(fn=cmd_reproduce)

    d = sub.add_parser("demo", help="train on the embedded data (sine, glyphs) and print test results",
                       description="The embedded defaults: MAML and Meta-SGD on sine (1-40-40-1, K=5), then ANIL "
                       "on the glyph benchmark (5-way 1-shot, 4-CONV-32). Config overrides apply to the sine runs.")
    d.add_argument("--iterations", type=int, default=10000, help="meta-iterations per sine run (default 10000)")
    d.add_argument("--glyph-iterations", type=int, default=200,
                   help="meta-iterations of the glyph run (default 200; 0 skips it)")
    d.add_argument("--glyph-tasks", type=int, default=600, help="test tasks of the glyph run (default 600)")
    d.add_argument("--out", default="runs/demo", help="where the demo runs go (default runs/demo)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)

    da = sub.add_parser("data", help="inspect the image datasets on disk",
                        description="Inspect the image datasets that lie under a data root.")
    da_sub = da.add_subparsers(dest="action", required=True)
    dc = da_sub.add_parser("check", help="list the datasets found, their layout, classes and images per split, "
                           "and every problem",
                           description="Search a data root for every dataset with an on-disk loader and report "
                           "its layout, classes and images per split and every problem found (unreadable images: "
                           f"the first {MAX_IMAGE_PROBLEMS} per split by name, the rest counted; exit 1 on a "
                           "problem or when nothing is found).")
    dc.add_argument("--root", help="data root (default: $INNERLOOP_DATA, else ./data)")
    dc.add_argument("--dataset", action="append", help="check only this dataset (repeatable)")
    dc.add_argument("--all-images", action="store_true", help="decode every image, not only the first per class")
    dc.set_defaults(fn=cmd_data_check)

    ub = sub.add_parser("upper-bound", help="train the config's model on each test task alone (an upper bound)",
                        usage="innerloop upper-bound [-h] [options] config [section.key=value ...]",
                        description="For each test task of CONFIG (eval.tasks tasks fixed by eval.seed), train a "
                        "fresh copy of its model to convergence on the task's support set plus --train-points "
                        "more points drawn from the same task, with full-batch Adam (cosine-annealed lr), and "
                        "score it on the task's query set. Writes OUT/test.json (mean ± 95% CI) like a trained "
                        "run. Synthetic tasks get fresh points; an image task gets other images of its classes "
                        "(--train-points / n_way per class, capped by what every class of the split has beyond "
                        "support and query).")
    ub.add_argument("config", help="config file (.toml or .json)")
    ub.add_argument("--out", help="output directory (default: runs/<name>-upper-bound)")
    ub.add_argument("--train-points", type=int, default=2000, help="extra points per task (default 2000)")
    ub.add_argument("--steps", type=int, default=2000, help="full-batch optimizer steps (default 2000)")
    ub.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    ub.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ub.add_argument("--tasks", type=int, help="number of test tasks (default: eval.tasks)")
    ub.add_argument("--data-seed", type=int, default=0, help="seed of the extra points (default 0)")
    ub.add_argument("--init", metavar="RUN_DIR", help="start from this run's learned θ0 (best.pt) instead of "
                    "the model's default initialisation")
    ub.add_argument("--resume", action="store_true", help="continue an interrupted upper bound in --out: the "
                    "tasks it finished are kept (upper_bound_partial.json), the others are trained")
    ub.add_argument("--no-progress", action="store_true")
    ub.set_defaults(fn=cmd_upper_bound)

    rp = sub.add_parser("report", help="write one Markdown report (tables + the papers' claims) from results/",
                        description="Collect the results tables written by `innerloop reproduce` into one Markdown "
                        "file, with each table's [[claim]] entries checked (difference of means ± a conservative "
                        "95% interval), the rows run and their training time, and the table's [[figure]] entries.")
    rp.add_argument("tables", nargs="*", help="table names (default: every results/*.json)")
    rp.add_argument("--results", default="results", help="results root (default results/)")
    rp.add_argument("--out", default="docs/RESULTS.md", help="report file (default docs/RESULTS.md)")
    rp.add_argument("--draw", action="store_true", help="first draw every figure the tables list ([[figure]]) "
                    "by running its `innerloop plot` command")
    rp.set_defaults(fn=cmd_report)

    add_plot_parser(sub).set_defaults(fn=cmd_plot)
    return p


def _raise_stop(signum: int, frame) -> None:
    raise Stop(signum)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if "=" not in r and not r.lstrip("-").startswith("~")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    # SIGTERM ends any command like Ctrl-C does (one line, status 143); train defers both to the end
    # of an iteration while it trains
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if on_main else None
    try:
        plugins.load_entry_points()
        plugins.load(args.imports)
        return args.fn(args, rest)
    except UserError as e:
        say(str(e))
        return 2
    except TrainingDiverged as e:
        say(f"training diverged: {e}")
        return 1
    except (KeyboardInterrupt, Stop) as e:
        stop = e if isinstance(e, Stop) else Stop(signal.SIGINT)
        say(f"interrupted by {stop.name}" + (f": {stop.detail}" if stop.detail else ""))
        return stop.status
    except OSError as e:  # a file system refusal no check foresaw (disk full, permissions, ...)
        where = f": {e.filename}" if e.filename else ""
        say(f"{e.strerror or e}{where}")
        return 1
    except Exception as e:
        if os.environ.get("INNERLOOP_DEBUG"):
            raise
        say(f"internal error: {type(e).__name__}: {e} (INNERLOOP_DEBUG=1 shows the traceback)")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
