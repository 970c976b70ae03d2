"""Command line: ``innerloop train | eval | demo``.

User errors (bad config, missing run, ...) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from innerloop.errors import UserError
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.train import RunInterrupted, TrainingDiverged, evaluate_run, train
from innerloop.rules import RULES


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; ``columns`` are (header, key) pairs."""
    cells = [[h for h, _ in columns]] + [[str(r.get(k, "")) for _, k in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_row(label: str, res: dict) -> dict:
    return {
        "run": label,
        "metric": res["metric"],
        "value": f"{res['mean']:.4f} ± {res['ci95']:.4f}",
        "tasks": res["tasks"],
        "steps": res["inner_steps"],
        "iteration": res["iteration"],
    }


COLUMNS = [("run", "run"), ("metric", "metric"), ("mean ± 95% CI", "value"), ("tasks", "tasks"),
           ("inner steps", "steps"), ("checkpoint iter", "iteration")]


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    try:
        res = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    except RunInterrupted as e:
        print(f"innerloop: {e} (run directory {out})", file=sys.stderr)
        return 130
    print(format_table([result_row(cfg.name, res)], COLUMNS))
    print(f"run directory: {out}")
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"eval takes no config overrides (got {' '.join(overrides)})")
    res = evaluate_run(args.run_dir, tasks=args.tasks, steps=args.steps, which=args.checkpoint, write=not args.no_write)
    print(format_table([result_row(res["name"], res)], COLUMNS))
    return 0


def cmd_reproduce(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"reproduce takes no config overrides (got {' '.join(overrides)}); edit the table")
    from innerloop.experiments.reproduce import markdown, reproduce

    report = reproduce(args.table, scale=args.scale, out_root=args.out, jobs=args.jobs, only=args.rows)
    print(markdown(report))
    return 0


DEMO_RUNS = {
    "sine-maml": ["rule.name=sgd"],
    "sine-meta_sgd": ["rule.name=meta_sgd"],
}


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    rows = []
    for name, extra in DEMO_RUNS.items():
        cfg = load(
            None,
            [
                f"name={name}",
                "task.name=sine",
                "task.k_shot=5",
                "model.hidden=[40, 40]",
                "rule.lr=0.01",
                f"train.iterations={args.iterations}",
                "train.val_every=1000",
                *extra,
                *overrides,
            ],
        )
        out = Path(args.out) / name
        if (out / "last.pt").exists():
            print(f"{name}: reusing {out} (delete it to train again)")
            res = evaluate_run(out)
        else:
            res = train(cfg, out, progress=not args.no_progress)
        rows.append(result_row(name, res))
    print()
    print(f"Sine regression (ALFA protocol), 1-40-40-1, K=5, 1 inner step, {args.iterations} meta-iterations:")
    print(format_table(rows, COLUMNS))
    return 0


def cmd_data_check(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"data check takes no config overrides (got {' '.join(overrides)})")
    import os

    from innerloop.data.images.check import run

    root = args.root if args.root is not None else os.environ.get("INNERLOOP_DATA", "data")
    text, status = run(root, args.dataset, all_images=args.all_images)
    print(text)
    return status


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="innerloop",
        description="Gradient-based meta-learning with learned inner-loop update rules.",
        epilog="Config overrides are section.key=value (or --section.key=value), e.g. rule.lr=0.05.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a run from a config file, then test it",
                       usage="innerloop train [-h] [--out OUT] [--resume] [--no-progress] config "
                       "[section.key=value ...]",
                       description="Meta-train from CONFIG (TOML or JSON) plus overrides; validate, "
                       "checkpoint and finally test on fixed tasks.",
                       epilog="Overrides are section.key=value with TOML values, e.g. rule.name=meta_sgd "
                       "model.hidden=[80,80,80] train.iterations=5000. Sections: task, model, rule, "
                       "algorithm, train, eval. Rules: " + ", ".join(sorted(RULES)) + ".")
    t.add_argument("config", help="config file (.toml or .json)")
    t.add_argument("--out", help="run directory (default: runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="test a run directory on fixed tasks",
                       description="Rebuild a run from RUN_DIR/config.json and test its best checkpoint.")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, help="number of test tasks (default: eval.tasks of the run)")
    e.add_argument("--steps", type=int, help="inner steps (default: algorithm.eval_inner_steps)")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--no-write", action="store_true", help="do not write test.json")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("reproduce", help="run every row of a table file and write a results report",
                       description="Run the rows of TABLE (skipping finished ones, resuming interrupted "
                       "ones) and write results/<table>.json and results/<table>.md.")
    r.add_argument("table", help="table file (TOML), e.g. configs/tables/alfa_table8.toml")
    r.add_argument("--scale", default="cpu", help="which scale's overrides to apply (default cpu)")
    r.add_argument("--out", default="results", help="results root (default results/)")
    r.add_argument("--jobs", type=int, default=1, help="rows trained at once (each with 1 thread when > 1)")
    r.add_argument("--rows", nargs="+", help="only these row names")
    r.set_defaults(fn=cmd_reproduce)

    d = sub.add_parser("demo", help="train MAML and Meta-SGD on sine regression and print test MSE",
                       description="The embedded default: MAML and Meta-SGD on sine (1-40-40-1, K=5).")
    d.add_argument("--iterations", type=int, default=10000, help="meta-iterations per run (default 10000)")
    d.add_argument("--out", default="runs/demo", help="where the demo runs go (default runs/demo)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)

    da = sub.add_parser("data", help="inspect the image datasets on disk",
                        description="Inspect the image datasets that lie under a data root.")
    da_sub = da.add_subparsers(dest="action", required=True)
    dc = da_sub.add_parser("check", help="list the datasets found, their layout, classes and images per split, "
                           "and every problem",
                           description="Search a data root for every dataset with an on-disk loader and report "
                           "its layout, classes and images per split and every problem found (exit 1 on a "
                           "problem or when nothing is found).")
    dc.add_argument("--root", help="data root (default: $INNERLOOP_DATA, else ./data)")
    dc.add_argument("--dataset", action="append", help="check only this dataset (repeatable)")
    dc.add_argument("--all-images", action="store_true", help="decode every image, not only the first per class")
    dc.set_defaults(fn=cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if "=" not in r]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        return args.fn(args, rest)
    except (UserError, FileExistsError) as e:
        print(f"innerloop: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"innerloop: training diverged: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
