"""The peers tables' comparison columns (fastest peer, ratio, memory, distance from the float64
reference, worst row) from synthetic results: exact values, nothing measured."""

from __future__ import annotations

from innerloop.bench.device import memory_kind, peak_mb
from innerloop.bench.peers import machine_info, markdown
from innerloop.bench.peers.compare import Comparison, auto_title, by_case, compare, worst, worst_line
from innerloop.bench.peers.table import summary

LIBS = ["learn2learn", "higher", "torchopt", "pytorch", "ours:auto", "ours:loop"]


def _ok(lib, row, s, mb_rss, rel64, **kw):
    return {"library": lib, "row": row, "meta_batch": 8, "version": "", "status": "ok", "note": "", "median_s": s,
            "tasks_per_s": 8 / s, "peak_rss_mb": mb_rss, "grad_rel64": rel64, **kw}


def _results():
    missing = {"library": "torchopt", "row": "1shot-so", "meta_batch": 8, "version": "", "status": "not installed",
               "note": ""}
    return [
        _ok("learn2learn", "1shot-so", 2.0, 500, 1e-3),
        _ok("higher", "1shot-so", 1.5, 600, 2e-3),
        missing,
        _ok("pytorch", "1shot-so", 1.8, 400, 4e-4),
        _ok("ours:auto", "1shot-so", 1.2, 700, 3e-4, path="threads"),
        _ok("ours:loop", "1shot-so", 1.6, 450, 5e-4),
        _ok("higher", "5shot-so", 3.0, 800, 6e-3),
        _ok("pytorch", "5shot-so", 3.3, 750, 7e-3),
        _ok("ours:auto", "5shot-so", 4.0, 900, 8e-3, path="threads"),
    ]


def test_the_fastest_peer_ratio_and_memories_per_row():
    cases = by_case(_results())
    assert compare(cases[("1shot-so", 8)]) == Comparison("higher", 1.5 / 1.2, 700, 600)
    assert compare(cases[("5shot-so", 8)]) == Comparison("higher", 0.75, 900, 800)
    assert worst(_results()) == (("5shot-so", 8), Comparison("higher", 0.75, 900, 800))
    assert compare({"higher": _results()[1]}) is None  # no ours:auto in the row
    assert auto_title(_results()) == "ours: auto (threads)"


def test_the_console_summary_shows_the_comparison_the_gradients_and_the_worst_row():
    text = summary(_results(), LIBS, ["1shot-so", "5shot-so"], [8])
    one = next(line for line in text.splitlines() if line.startswith("1-shot, 2nd order") and "higher" in line)
    assert one.split()[-5:] == ["higher", "1.25", "700", "/", "600"]
    assert "not installed" in one
    grads = [line for line in text.splitlines() if line.startswith("1-shot, 2nd order") and "e-0" in line]
    assert grads[0].split()[-7:] == ["1.0e-03", "2.0e-03", "not", "installed", "4.0e-04", "3.0e-04", "5.0e-04"]
    assert text.splitlines()[-1] == worst_line(_results())
    assert worst_line(_results()).startswith("worst row: ratio 0.75 (5-shot, 2nd order, meta-batch 8; fastest peer "
                                             "higher;")
    assert "ours: auto (threads)" in text and "peak RSS" in text


def test_the_markdown_tables_have_the_comparison_and_gradient_columns():
    info = {**machine_info(1), "load_end": (0.0, 0.0, 0.0), "repeats": 1, "warmup": 1}
    body = markdown(_results(), info, LIBS, "python -m innerloop.bench.peers")
    assert ("| row | learn2learn | higher | TorchOpt | plain PyTorch | ours: auto (threads) | ours: loop "
            "| fastest peer | ratio | memory (MB) |") in body
    assert ("| 1-shot, 2nd order | 2.000 | 1.500 | not installed | 1.800 | 1.200 | 1.600 | higher | 1.25 | "
            "700 / 600 |") in body
    assert "| 5-shot, 2nd order | – | 3.000 | – | 3.300 | 4.000 | – | higher | 0.75 | 900 / 800 |" in body
    assert ("| 1-shot, 2nd order | 1.0e-03 | 2.0e-03 | not installed | 4.0e-04 | 3.0e-04 | 5.0e-04 |") in body
    assert body.rstrip().endswith("fastest peer higher; ratio = its s/meta-step ÷ ours: auto's).")


def test_cuda_results_report_device_memory():
    r = _ok("ours:auto", "1shot-so", 1.0, 300, None, peak_cuda_mb=1234.0)
    assert peak_mb(r) == 1234.0 and peak_mb(_results()[0]) == 500
    assert "max_memory_allocated" in memory_kind([r]) and memory_kind(_results()) == "peak RSS"
    c = compare({"ours:auto": r, "higher": _ok("higher", "1shot-so", 2.0, 400, None, peak_cuda_mb=99.0)})
    assert c == Comparison("higher", 2.0, 1234.0, 99.0)


def test_without_peers_or_float64_reference_the_cells_are_dashes():
    text = summary([_ok("ours:auto", "1shot-so", 1.0, 300, None, path="loop")], ["ours:auto"], ["1shot-so"], [8])
    grads = text.splitlines()[-3]
    assert grads.split() == ["1-shot,", "2nd", "order", "–"]
    assert text.splitlines()[-1].startswith("worst row: – ")
