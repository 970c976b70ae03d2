"""The evaluation benchmark on a tiny problem: both implementations score the same tasks alike,
the markdown section lands between its markers, and a missing device is one line (nothing timed)."""

from __future__ import annotations

import contextlib
import io
import types

import pytest
import torch

from innerloop.bench import child, evaluation
from innerloop.bench.eval_cases import EvalCase, make_tasks, run_case
from innerloop.bench.sections import write_section

TINY = EvalCase(tasks=3, steps=2, shots=1, channels=4)


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a busy machine make these tiny kernels 10x slower; restored after."""
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


@pytest.mark.parametrize("shots", [1, 5])
def test_ours_and_the_plain_loop_give_the_same_accuracies(shots, one_thread):
    c = EvalCase(tasks=3, steps=2, shots=shots, channels=4)
    ours, plain = run_case("ours", c, repeats=0, threads=one_thread), run_case("plain", c, repeats=0)
    assert len(ours["accuracies"]) == len(plain["accuracies"]) == 3
    assert evaluation.max_acc_diff(ours, plain) == 0.0, (ours["accuracies"], plain["accuracies"])
    assert ours["path"] in ("loop", "threads") and plain["path"] is None and ours["times_s"] == []


def test_the_tasks_are_deterministic_and_shaped_as_asked():
    a, b = make_tasks(TINY), make_tasks(TINY)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a.support_x.shape == (3, 5, 1, 28, 28) and a.query_y.shape == (3, 75)


def _row(impl, shots, s, acc, path=None):
    return {"impl": impl, "path": path, "shots": shots, "tasks": 3, "steps": 2, "channels": 4, "threads": 1,
            "device": "cpu", "median_s": s, "tasks_per_s": 3 / s, "times_s": [s], "peak_rss_mb": 300.0,
            "accuracies": [acc, acc, acc]}


def test_the_markdown_section_is_written_between_its_markers(tmp_path):
    rows = [_row("ours", 1, 0.5, 0.4, "threads"), _row("plain", 1, 1.0, 0.4)]
    body = evaluation.markdown(rows, {1: 0.0}, "python -m innerloop.bench.evaluation --tasks 3")
    assert "| 1 | ours: auto (threads) | 0.500 | 6.0 | 300 | 0.4000 |" in body
    assert "| 1 | plain loop | 1.000 | 3.0 | 300 | 0.4000 |" in body
    assert "1-shot: ratio 2.00, max per-task accuracy difference 0." in body
    doc = tmp_path / "perf.md"
    doc.write_text("# Performance\n\n<!-- evaluation:start -->\nold\n<!-- evaluation:end -->\n\nkept below\n")
    write_section(doc, body, tag=evaluation.TAG)
    text = doc.read_text()
    assert "old" not in text and text.endswith("<!-- evaluation:end -->\n\nkept below\n")
    assert text.index("<!-- evaluation:start -->") < text.index(body) < text.index("<!-- evaluation:end -->")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_error_line_and_exit_2(capsys):
    assert evaluation.main(["--device", "cuda", "--tasks", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: device 'cuda'")


def test_the_threads_path_scores_like_the_plain_loop(one_thread):
    c = EvalCase(tasks=3, steps=2, shots=1, channels=4)
    ours = run_case("ours", c, repeats=0, threads=2)  # auto picks threads for a conv model with 2 threads
    plain = run_case("plain", c, repeats=0, threads=one_thread)
    assert ours["path"] == "threads" and evaluation.max_acc_diff(ours, plain) == 0.0


def test_the_command_writes_its_section_and_compares_accuracies(monkeypatch, tmp_path, capsys, one_thread):
    """The whole command on a tiny problem, its per-case processes run in this one (import cost)."""

    def in_process(cmd, **_):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = evaluation.main(cmd[3:])  # [python, -m, innerloop.bench.evaluation, ...]
        return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr="")

    monkeypatch.setattr(child, "subprocess", types.SimpleNamespace(run=in_process))
    doc = tmp_path / "perf.md"
    doc.write_text("# Performance\n\nkept\n")
    assert evaluation.main(["--tasks", "2", "--steps", "1", "--shots", "1", "--channels", "4", "--repeats", "1",
                            "--threads", str(one_thread), "--markdown", str(doc)]) == 0
    out = capsys.readouterr().out
    assert "ours: auto (loop)" in out and "plain loop" in out and "max per-task accuracy difference 0" in out
    text = doc.read_text()
    assert text.startswith("# Performance\n\nkept\n") and text.count("<!-- evaluation:start -->") == 1
    section = text.split("<!-- evaluation:start -->\n")[1].split("<!-- evaluation:end -->")[0]
    assert section.startswith("## Evaluation benchmark") and "| 1 | ours: auto (loop) |" in section
