"""What each ``innerloop`` subcommand does once its arguments are parsed (``cmd_*(args, overrides)``,
returning the exit status); the parser and the one-line error handling are :mod:`innerloop.experiments.cli`'s."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from innerloop.data.images.check import run as check_data
from innerloop.experiments import distributed
from innerloop.experiments.build import resolve_device
from innerloop.experiments.config import ConfigError, load
from innerloop.experiments.plan import plan, plan_text
from innerloop.experiments.plot_cli import run_plot
from innerloop.experiments.report import write_report
from innerloop.experiments.reproduce import markdown, reproduce
from innerloop.experiments.run import check_output_dir
from innerloop.experiments.show_config import config_text
from innerloop.experiments.train import RunInterrupted, evaluate_run, train
from innerloop.experiments.upper_bound import UpperBoundOptions, upper_bound


def say(text: str) -> None:
    """One line on stderr, whatever the message holds."""
    print("innerloop: " + " ".join(str(text).split()), file=sys.stderr)


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


def _device_overrides(args: argparse.Namespace) -> list[str]:
    """``--device X`` as the override ``train.device=X`` (checked first, so a missing CUDA is one line)."""
    if getattr(args, "device", None) is None:
        return []

    resolve_device(args.device, "--device")
    return [f"train.device={json.dumps(args.device)}"]


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load(args.config, [*overrides, *_device_overrides(args)])
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    try:
        res = train(cfg, out, resume=args.resume, overwrite=args.overwrite,
                    progress=not (args.no_progress or args.quiet))
    except RunInterrupted as e:
        say(str(e))
        return e.status
    if not distributed.is_main() or args.quiet:  # under torchrun only rank 0 prints the result
        return 0
    print(format_table([result_row(cfg.name, res)], COLUMNS))
    print(f"run directory: {out}")
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"eval takes no config overrides (got {' '.join(overrides)})")
    _device_overrides(args)  # checked here: one line naming the flag
    res = evaluate_run(args.run_dir, tasks=args.tasks, steps=args.steps, which=args.checkpoint, write=not args.no_write,
                       device=args.device, dataset=args.dataset, root=args.root, split_file=args.split_file)
    if args.quiet:
        return 0
    print(format_table([result_row(res["name"], res)], COLUMNS))
    if "file" in res:
        print(f"wrote {res['file']}")
    return 0


def cmd_reproduce(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"reproduce takes no config overrides (got {' '.join(overrides)}); edit the table")

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.plan:
        if args.collect or args.smoke:
            raise ConfigError("--plan trains nothing: it does not combine with --collect or --smoke")
        print(plan_text(plan(args.table, scale=args.scale, out_root=args.out, only=args.rows), args.scale), end="")
        return 0
    device = _device_overrides(args)
    report = reproduce(args.table, scale=args.scale, out_root=args.out, jobs=args.jobs, only=args.rows,
                       restart_stale=args.restart_stale, smoke=args.smoke, collect=args.collect, run_overrides=device)
    if not args.quiet:
        print(markdown(report))
    return 0


def cmd_config(args: argparse.Namespace, overrides: list[str]) -> int:

    print(config_text(load(args.config, overrides), as_json=args.json), end="")
    return 0


DEMO_RUNS = {
    "sine-maml": ["rule.name=sgd"],
    "sine-meta_sgd": ["rule.name=meta_sgd"],
}


def _demo_run(name: str, cfg_overrides: list[str], out_root: str, progress: bool) -> dict:
    cfg = load(None, [f"name={name}", *cfg_overrides])
    out = Path(out_root) / name
    if (out / "test.json").exists():
        print(f"{name}: reusing {out} (delete it to train again)")
        return json.loads((out / "test.json").read_text())
    # a demo run stopped earlier continues where it stopped
    return train(cfg, out, resume=(out / "config.json").exists(), progress=progress)


# The glyph run: ANIL (first order) on the embedded glyph benchmark, 5-way 1-shot, 4-CONV-32.
DEMO_GLYPHS = [
    "task.name=images", "task.dataset=glyphs", "task.n_way=5", "task.k_shot=1", "task.query=15",
    "model.name=conv4", "model.channels=32", "rule.name=sgd", "rule.lr=0.4",
    "algorithm.name=anil", "algorithm.first_order=true", "algorithm.inner_steps=5", "algorithm.eval_inner_steps=10",
    "train.meta_batch=8", "eval.batch=50",
]


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    rows = []
    for name, extra in DEMO_RUNS.items():
        res = _demo_run(name, ["task.name=sine", "task.k_shot=5", "model.hidden=[40, 40]", "rule.lr=0.01",
                               f"train.iterations={args.iterations}", "train.val_every=1000", *extra, *overrides],
                        args.out, not args.no_progress)
        rows.append(result_row(name, res))
    print()
    print(f"Sine regression (ALFA protocol), 1-40-40-1, K=5, 1 inner step, {args.iterations} meta-iterations:")
    print(format_table(rows, COLUMNS))
    if args.glyph_iterations > 0:
        its = args.glyph_iterations
        glyphs = [*DEMO_GLYPHS, f"train.iterations={its}", f"train.val_every={max(1, its // 2)}",
                  f"train.val_tasks={min(100, args.glyph_tasks)}", f"eval.tasks={args.glyph_tasks}"]
        res = _demo_run("glyphs-anil-5w1s", glyphs, args.out, not args.no_progress)
        print()
        print(f"Glyphs (embedded benchmark), 5-way 1-shot, 4-CONV-32, ANIL (first order), {its} meta-iterations, "
              "10 inner steps at test:")
        print(format_table([result_row("glyphs-anil-5w1s", res)], COLUMNS))
    return 0


def cmd_data_check(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"data check takes no config overrides (got {' '.join(overrides)})")


    root = args.root if args.root is not None else os.environ.get("INNERLOOP_DATA", "data")
    text, status = check_data(root, args.dataset, all_images=args.all_images)
    print(text)
    return status


def cmd_upper_bound(args: argparse.Namespace, overrides: list[str]) -> int:

    cfg = load(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-upper-bound"
    check_output_dir(out)  # before the training, not after it
    try:
        opts = UpperBoundOptions(train_points=args.train_points, steps=args.steps, lr=args.lr,
                                 optimizer=args.optimizer, tasks=args.tasks, data_seed=args.data_seed, init=args.init)
    except ValidationError as e:
        raise ConfigError("upper-bound: " + "; ".join(f"--{'-'.join(map(str, x['loc'])).replace('_', '-')}: "
                                                      f"{x['msg']}" for x in e.errors())) from None
    res = upper_bound(cfg, out, opts, progress=not args.no_progress, resume=args.resume)
    row = {"run": cfg.name, "metric": res["metric"], "value": f"{res['mean']:.4f} ± {res['ci95']:.4f}",
           "tasks": res["tasks"], "points": res["train_points"], "steps": res["steps"],
           "train": f"{res['train_loss']:.4g} / {res['train_metric']:.4f}"}
    print(format_table([row], [("run", "run"), ("metric", "metric"), ("mean ± 95% CI", "value"), ("tasks", "tasks"),
                               ("train points", "points"), ("steps", "steps"),
                               ("final train loss / metric", "train")]))
    print(f"run directory: {out}")
    return 0


def cmd_report(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"report takes no config overrides (got {' '.join(overrides)})")

    command = " ".join(["innerloop report", *args.tables, "--results", args.results, "--out", args.out,
                        *(["--draw"] if args.draw else [])])
    print(f"wrote {write_report(args.tables, args.results, args.out, command=command, draw=args.draw)}")
    return 0


def cmd_plot(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"plot takes no config overrides (got {' '.join(overrides)})")
    print(f"wrote {run_plot(args)}")
    return 0
