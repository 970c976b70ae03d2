"""Reliability and security of the CLI (issue 16): one test per case.

Nothing executes from a file; one writer per run directory; a fresh run never mixes into an old one;
``--resume`` checks what it continues; ``eval`` never destroys results; every bad input gets one
line and the right exit status (2: usage, config, paths, data, checkpoints; 1: run time). The
interruption cases are in ``test_interruptions.py``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.cli import main
from innerloop.experiments.lock import RunLock
from innerloop.experiments.run import Run
from innerloop.experiments.train import RunInterrupted, TrainingDiverged, train
from run_helpers import cli, one_line, outcome, tiny

TINY_ARGS = ["model.hidden=[8]", "task.query=10", "train.meta_batch=4", "train.val_every=3", "train.val_tasks=5",
             "train.log_every=1", "train.checkpoint_every=2", "eval.tasks=7", "eval.batch=3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (8 iterations), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("done") / "run"
    train(tiny(), out, progress=False)
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.fixture
def config_file(tmp_path) -> Path:
    f = tmp_path / "c.toml"
    f.write_text('name = "tiny"\n')
    return f


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """``innerloop ARGS`` in this process: its status and its one stderr line ('' when none)."""
    status = main(list(args))
    err = capsys.readouterr().err
    return status, (one_line(err) if err.strip() else "")


def train_args(config_file: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(config_file), "--out", str(out), "--no-progress", *TINY_ARGS, "train.iterations=8", *extra]


# ---- 1. nothing executes from a file ------------------------------------------------------------
class _Payload:
    """Unpickling this would create ``marker`` (with plain pickle, as torch.load(weights_only=False))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("entry", ["eval", "resume", "upper-bound --init"])
def test_a_crafted_checkpoint_executes_nothing(entry, run_copy, tmp_path, capsys, config_file):
    marker = tmp_path / "pwned"
    for name in ("best.pt", "last.pt"):
        state = ckpt.load_torch(run_copy / name)
        state["extra"] = _Payload(marker)
        torch.save(state, run_copy / name)
    args = {"eval": ["eval", str(run_copy)],
            "resume": train_args(config_file, run_copy, "--resume"),
            "upper-bound --init": ["upper-bound", str(config_file), "--out", str(tmp_path / "ub"), "--init",
                                   str(run_copy), "--steps", "1", "--train-points", "1", "--tasks", "2"]}[entry]
    status, line = run_cli(capsys, *args)
    assert status == 2 and "nothing in it was executed" in line
    assert not marker.exists()


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _put(f: Path, **changes) -> None:
    state = ckpt.load_torch(f)
    state.update(changes)
    torch.save(state, f)


DAMAGE = {
    "empty": lambda f: f.write_bytes(b""),
    "truncated": _truncate,
    "garbage": lambda f: f.write_bytes(os.urandom(1000)),
    "plain pickle": lambda f: f.write_bytes(pickle.dumps({"iteration": 1})),
    "not a dict": lambda f: torch.save([1, 2], f),
    "missing entry": lambda f: torch.save({"iteration": 3}, f),
    "wrong type": lambda f: _put(f, iteration="3"),
    "newer format": lambda f: _put(f, format=99),
    "another model": lambda f: _put(f, algorithm={"model.net.0.weight": torch.zeros(3, 3)}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("which", ["best.pt", "last.pt"])
def test_a_damaged_checkpoint_is_one_line_exit_2(damage, which, run_copy, capsys, config_file):
    DAMAGE[damage](run_copy / which)
    args = ["eval", str(run_copy), "--checkpoint", which[:-3]] if which == "best.pt" else \
        train_args(config_file, run_copy, "--resume")
    status, line = run_cli(capsys, *args)
    assert status == 2 and which in line, line


def test_checkpoints_hold_tensors_and_plain_data_only(finished):
    for name in ("last.pt", "best.pt"):
        torch.load(finished / name, weights_only=True)  # raises on anything else
        assert ckpt.load_torch(finished / name)["format"] == ckpt.FORMAT


# ---- 2. one writer per run directory, no mixed runs ---------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder(run_copy, capsys, config_file):
    with RunLock(run_copy):  # held through another open file: flock excludes it as it would another process
        before = (run_copy / "metrics.jsonl").read_bytes()
        status, line = run_cli(capsys, *train_args(config_file, run_copy, "--resume"))
    assert status == 2 and f"pid {os.getpid()}" in line and "in use" in line
    assert (run_copy / "metrics.jsonl").read_bytes() == before


def test_the_lock_is_free_again_after_a_run(run_copy):
    with RunLock(run_copy):
        pass  # the finished run released it


def test_a_fresh_run_refuses_a_directory_holding_a_run(run_copy, capsys, config_file):
    before = (run_copy / "metrics.jsonl").read_bytes()
    status, line = run_cli(capsys, *train_args(config_file, run_copy))
    assert status == 2 and "holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run_copy / "metrics.jsonl").read_bytes() == before


def test_a_fresh_run_refuses_a_non_empty_directory(tmp_path, capsys, config_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    status, line = run_cli(capsys, *train_args(config_file, tmp_path / "out"))
    assert status == 2 and "not empty (notes.txt)" in line


def test_overwrite_starts_again_but_never_deletes_foreign_files(finished, run_copy, capsys, config_file):
    (run_copy / "eval-best-steps1-tasks7.json").write_text("{}")
    assert run_cli(capsys, *train_args(config_file, run_copy, "--overwrite"))[0] == 0
    assert outcome(run_copy) == outcome(finished) and not (run_copy / "eval-best-steps1-tasks7.json").exists()
    (run_copy / "notes.txt").write_text("mine")
    status, line = run_cli(capsys, *train_args(config_file, run_copy, "--overwrite"))
    assert status == 2 and "notes.txt" in line and (run_copy / "notes.txt").exists()


def test_resume_and_overwrite_exclude_each_other(run_copy, config_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(train_args(config_file, run_copy, "--resume", "--overwrite"))
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_resume_with_fewer_iterations_than_done_is_refused(run_copy, capsys, config_file):
    status, line = run_cli(capsys, *train_args(config_file, run_copy, "--resume", "train.iterations=5"))
    assert status == 2 and "iteration 8" in line and "train.iterations=5" in line


def test_resume_with_a_changed_key_names_the_difference(run_copy, capsys, config_file):
    status, line = run_cli(capsys, *train_args(config_file, run_copy, "--resume", "train.meta_lr=0.5"))
    assert status == 2 and "train.meta_lr: 0.001 -> 0.5" in line


def test_resume_with_more_iterations_continues(finished, run_copy):
    res = train(tiny("train.iterations=10"), run_copy, resume=True, progress=False)
    rows = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    its = [r["iteration"] for r in rows if "loss" in r]
    assert its == list(range(1, 11)) and res["iterations"] == 10
    assert [r.get("event") for r in rows].count("test") == 1  # the old test event was cut with the rows after it


def test_resume_cuts_metrics_back_to_the_checkpoint(finished, tmp_path):
    """Rows written after last.pt (a row of iteration 7, a test event, half a line) are cut on resume."""
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(tiny(), out, progress=False, stop_at=6)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 7, "loss": 1.0, "metric": 1.0, "seconds": 1.0}\n{"event": "test", "mean": 1}\n'
                '{"iteration": 8, "lo')
    train(tiny(), out, resume=True, progress=False)
    assert outcome(out) == outcome(finished)


def test_stale_temp_files_are_removed_on_start(run_copy):
    stale = run_copy / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(tiny(), run_copy, resume=True, progress=False)
    assert not stale.exists()


# ---- 3. eval never destroys results -------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "-1"), ("--tasks", "0"), ("--tasks", "-5")])
def test_eval_flags_must_be_at_least_1(flag, value, run_copy, capsys):
    status, line = run_cli(capsys, "eval", str(run_copy), flag, value)
    assert status == 2 and f"{flag} must be at least 1, got {value}" in line


def test_eval_writes_its_own_file_and_never_test_json(run_copy, capsys):
    before = {n: (run_copy / n).read_bytes() for n in ("test.json", "metrics.jsonl")}
    assert main(["eval", str(run_copy), "--steps", "2", "--tasks", "6"]) == 0
    assert main(["eval", str(run_copy), "--checkpoint", "last"]) == 0
    assert {n: (run_copy / n).read_bytes() for n in before} == before
    a = json.loads((run_copy / "eval-best-steps2-tasks6.json").read_text())
    b = json.loads((run_copy / "eval-last-steps1-tasks7.json").read_text())
    assert (a["tasks"], a["inner_steps"], b["checkpoint"]) == (6, 2, "last")
    assert "eval-best-steps2-tasks6.json" in capsys.readouterr().out


# ---- 4. one line, the right status ----------------------------------------------------------------
def test_resume_without_config_json_is_one_line(run_copy, capsys, config_file):
    (run_copy / "config.json").unlink()
    status, line = run_cli(capsys, *train_args(config_file, run_copy, "--resume"))
    assert status == 2 and "nothing to resume" in line


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"train": {"iters": 3}}'])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_corrupt_config_json_is_one_line(content, command, run_copy, capsys, config_file):
    (run_copy / "config.json").write_bytes(content)
    args = train_args(config_file, run_copy, "--resume") if command == "resume" else ["eval", str(run_copy)]
    status, line = run_cli(capsys, *args)
    assert status == 2 and "config" in line


def test_a_non_utf8_config_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_bytes(b'name = "caf\xe9"\n')
    status, line = run_cli(capsys, "train", str(f), "--out", str(tmp_path / "r"))
    assert status == 2 and "not UTF-8" in line


def test_out_under_a_regular_file_is_one_line(tmp_path, capsys, config_file):
    (tmp_path / "file").write_text("x")
    status, line = run_cli(capsys, *train_args(config_file, tmp_path / "file" / "run"))
    assert status == 2 and "is a file" in line
    status, line = run_cli(capsys, *train_args(config_file, tmp_path / "file"))
    assert status == 2 and "is a file" in line


def test_upper_bound_out_under_a_regular_file_is_refused_before_the_work(tmp_path, capsys, config_file):
    (tmp_path / "file").write_text("x")
    status, line = run_cli(capsys, "upper-bound", str(config_file), "--out", str(tmp_path / "file" / "ub"))
    assert status == 2 and "is a file" in line


def _read_only(monkeypatch, directory: Path) -> None:
    """Make ``directory`` refuse new files: chmod, and, for root (whom chmod does not stop), os.open."""
    directory.chmod(0o555)
    if os.geteuid() == 0:
        real = os.open

        def refuse(path, flags, *a, **k):
            if Path(path).parent == directory and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", refuse)


def test_a_read_only_output_directory_is_one_line(tmp_path, capsys, config_file, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(monkeypatch, out)
    try:
        status, line = run_cli(capsys, *train_args(config_file, out))
    finally:
        out.chmod(0o755)
    assert status == 2 and "cannot write in run directory" in line


def test_a_read_only_run_directory_is_one_line_for_resume_and_eval(run_copy, capsys, config_file, monkeypatch):
    _read_only(monkeypatch, run_copy)
    try:
        status, line = run_cli(capsys, *train_args(config_file, run_copy, "--resume"))
        assert status == 2 and "cannot write in run directory" in line
        status, line = run_cli(capsys, "eval", str(run_copy))
        assert status == 2 and "--no-write" in line
        assert run_cli(capsys, "eval", str(run_copy), "--no-write")[0] == 0
    finally:
        run_copy.chmod(0o755)


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_reproduce_jobs_must_be_at_least_1(jobs, capsys):
    status, line = run_cli(capsys, "reproduce", "alfa_table8", "--jobs", jobs)
    assert status == 2 and f"--jobs must be at least 1, got {jobs}" in line


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_config_numbers_are_refused(value, tmp_path, capsys, config_file):
    status, line = run_cli(capsys, *train_args(config_file, tmp_path / "r", f"rule.lr={value}"))
    assert status == 2 and f"rule.lr: must be a finite number (got {value.lstrip('-') if value == 'nan' else value}"\
        in line


def test_validation_leaves_its_input_unchanged():
    from innerloop.experiments.config import validate

    data = {"rule": {"lr": 0.1}, "model": {"hidden": [4]}, "algorithm": {"name": "fomaml"}}
    before = json.dumps(data)
    assert validate(data).algorithm.first_order
    assert json.dumps(data) == before


def test_jsonl_and_json_stay_valid_with_non_finite_values(tmp_path):
    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    with Run(tiny(), tmp_path / "r") as run:
        run.log(iteration=1, val=math.nan, val_ci95=math.inf, best_iteration=1)
        run.write_test({"mean": -math.inf, "ci95": 0.5, "tasks": 3, "trace": {"lr": [1.0, math.nan]}})
    row = strict((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-2])
    assert row == {"iteration": 1, "val": None, "val_ci95": None, "best_iteration": 1, "seconds": 0.0,
                   "nonfinite": ["val", "val_ci95"]}  # no training clock running: seconds 0
    test = strict((tmp_path / "r" / "test.json").read_text())
    assert test["mean"] is None and test["trace"]["lr"] == [1.0, None] and test["nonfinite"] == ["mean", "trace.lr.1"]


def test_divergence_names_a_checkpoint_that_exists(tmp_path):
    diverging = ["train.optimizer=sgd", "train.meta_lr=1e6", "train.iterations=50", "train.checkpoint_every=1"]
    with pytest.raises(TrainingDiverged) as e:
        train(tiny(*diverging), tmp_path / "a", progress=False)
    held = ckpt.load_torch(tmp_path / "a" / "last.pt")["iteration"]
    assert f"{tmp_path / 'a' / 'last.pt'} holds iteration {held}" in str(e.value)
    with pytest.raises(TrainingDiverged) as e:  # before the first checkpoint: says there is none
        train(tiny(*diverging[:3], "train.checkpoint_every=100"), tmp_path / "b", progress=False)
    assert "no checkpoint was written yet" in str(e.value) and not (tmp_path / "b" / "last.pt").exists()


def test_ctrl_c_and_unexpected_errors_in_any_command_are_one_line(run_copy, capsys, monkeypatch):
    import innerloop.experiments.commands as commands

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "evaluate_run", interrupted)
    status, line = run_cli(capsys, "eval", str(run_copy))
    assert status == 130 and "SIGINT" in line

    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(commands, "evaluate_run", broken)
    status, line = run_cli(capsys, "eval", str(run_copy))
    assert status == 1 and "internal error: RuntimeError: boom second line" in line


def _dogs(root: Path, junk: int) -> list[Path]:
    """The Stanford Dogs layout (Li et al. split), one image per breed; the first ``junk`` train images junk."""
    from innerloop.data.images._common import builtin_split

    table = builtin_split("dogs_li", "dogs")
    bad = []
    for b in sorted(table["train"] + table["val"] + table["test"]):
        f = root / "StanfordDogs" / "Images" / b / f"{b.split('-')[0]}_0.jpg"
        f.parent.mkdir(parents=True)
        if b in table["train"] and len(bad) < junk:
            f.write_bytes(b"not an image")
            bad.append(f)
        else:
            Image.new("RGB", (12, 10)).save(f)
    return bad


def test_data_check_names_every_unreadable_image_up_to_a_limit(tmp_path, capsys, monkeypatch):
    bad = _dogs(tmp_path, junk=40)
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "dogs"]) == 1
    out = capsys.readouterr().out
    assert all(str(f) in out for f in bad)  # every one of the 40, not the first 5
    import innerloop.data.images.check as check

    monkeypatch.setattr(check, "MAX_IMAGE_PROBLEMS", 15)
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "dogs"]) == 1
    out = capsys.readouterr().out
    assert sum(str(f) in out for f in bad) == 15 and "25 more unreadable images (40 in all; the first 15" in out


def test_cli_subprocess_error_is_one_line_exit_2(tmp_path):
    """The same path through a real process (exit status and stderr as a shell sees them)."""
    r = cli("eval", str(tmp_path / "nothing"), "--tasks", "-5")
    assert r.returncode == 2 and "--tasks must be at least 1" in one_line(r.stderr)


def test_resume_accepts_a_run_stored_before_an_option_existed(tmp_path):
    """A key added to the config since the run started (its default keeps the old behaviour) is no change."""
    from innerloop.experiments.cli import main as cli

    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "old"\n')
    args = ["train", str(cfg), "train.iterations=2", "train.val_every=2", "train.val_tasks=2", "eval.tasks=2",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli(args) == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    del stored["algorithm"]["norm_stats"]  # as written by a version without that option
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    assert cli([*args[:2], "train.iterations=4", *args[3:], "--resume"]) == 0
    stored["algorithm"]["norm_stats"] = "running"  # a real change is still refused
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    assert cli([*args[:2], "train.iterations=6", *args[3:], "--resume"]) == 2
