"""The peers benchmark's plumbing on a tiny configuration (no timing assertions; the peer libraries
are optional: their parts are skipped when they are not installed)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import types

import pytest
import torch

from innerloop.bench import child, peers
from innerloop.bench.peers import (
    GRAD_REFERENCE,
    PEERS,
    REFERENCE,
    ROWS,
    grad_diff,
    installed,
    markdown,
    run_case,
    tiny_config,
    write_section,
)


def _case(lib, row, **kw):
    return run_case(lib, tiny_config(row=row, **kw), repeats=1, warmup=1)


@functools.cache
def _reference_grads(row):
    """Our loop's meta-gradients for a row, computed once for all the tests that compare with them (read only)."""
    return _case(GRAD_REFERENCE, row)["grads"]


@pytest.mark.parametrize("row", list(ROWS))
def test_ours_matches_the_plain_pytorch_reference(row):
    ours, ref = _case(GRAD_REFERENCE, row), _case(REFERENCE, row)
    assert ours["status"] == ref["status"] == "ok"
    assert ours["median_s"] > 0 and ours["peak_rss_mb"] > 0 and ours["tasks_per_s"] > 0
    keys = set(ours["grads"])
    assert {k for k in keys if not k.startswith("alpha:")} == {n for n, _ in peers.make_problem(tiny_config())[0]
                                                               .named_parameters()}
    assert any(k.startswith("alpha:") for k in keys) == (ROWS[row].rule == "meta_sgd")
    diff, rel = grad_diff(ref["grads"], ours["grads"])
    assert diff < 1e-5, diff
    assert max(g.abs().max().item() for g in ours["grads"].values()) > 1e-4  # not comparing zeros


def test_grad_diff_sees_a_difference():
    a = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([1.0, -2.5]), "b": None}
    assert grad_diff(a, a) == (0.0, 0.0)
    diff, rel = grad_diff(b, a)
    assert diff == pytest.approx(0.5) and rel == pytest.approx(0.25)
    with pytest.raises(ValueError):
        grad_diff({"w": a["w"]}, a)


@pytest.mark.parametrize("path", [p for p in peers.our_paths() if p != "loop"] + ["no-such-path"])
def test_every_listed_path_runs_or_is_reported_unavailable(path):
    r = _case(f"ours:{path}", "1shot-so")
    if path == "no-such-path":
        assert r["status"] == "n/a" and peers.ours_path_problem(path)
        return
    if r["status"] == "n/a":
        pytest.skip(f"path {path!r} not in this version: {r['note']}")
    assert r["status"] == "ok"
    diff, _ = grad_diff(r["grads"], _reference_grads("1shot-so"))
    assert diff < 1e-5


@pytest.mark.parametrize("lib", list(PEERS))
@pytest.mark.parametrize("row", ["1shot-so", "1shot-fo", "5shot-so", "metasgd-1shot-so"])
def test_peer_meta_gradient_matches_ours(lib, row):
    if not installed(lib):
        r = _case(lib, row)
        assert r["status"] == "not installed"
        pytest.skip(f"{lib} is not installed (make peers)")
    r = _case(lib, row)
    assert r["status"] == "ok", r.get("note")
    diff, _ = grad_diff(r["grads"], _reference_grads(row))
    assert diff < 1e-5


def test_float64_meta_gradients_agree_tightly_and_the_default_dtype_is_restored():
    before = torch.get_default_dtype()
    libs = [GRAD_REFERENCE, REFERENCE, "ours:vmap", *(lib for lib in PEERS if installed(lib))]
    res = {lib: _case(lib, "1shot-so", dtype="float64", steps=2) for lib in libs}
    assert torch.get_default_dtype() == before
    ref = res[GRAD_REFERENCE]["grads"]
    assert all(g.dtype == torch.float64 for g in ref.values())
    for lib, r in res.items():
        assert grad_diff(r["grads"], ref)[0] < 1e-10, lib


@pytest.mark.parametrize("lib", list(PEERS))
def test_a_missing_peer_is_reported_not_installed(lib, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == PEERS[lib][0]
                        else real(name, *a))
    assert not installed(lib)
    assert _case(lib, "1shot-fo")["status"] == "not installed"


def test_markdown_section_is_rewritten_in_place(tmp_path):
    ok = _case(GRAD_REFERENCE, "1shot-fo")
    ok.update(grads=None)
    rows = [ok, {"library": "higher", "row": "1shot-fo", "meta_batch": 2, "version": "",
                 "status": "not installed", "note": ""}]
    info = {**peers.machine_info(1), "load_end": (0.0, 0.0, 0.0), "repeats": 1, "warmup": 1}
    body = markdown(rows, info, ["higher", GRAD_REFERENCE], "python -m innerloop.bench.peers --meta-batch 2")
    assert "| 1-shot, 1st order | not installed |" in body and "--meta-batch 2" in body

    doc = tmp_path / "perf.md"
    doc.write_text("# Performance\n\nkept above\n")
    write_section(doc, "first")  # no markers yet: appended with them
    text = doc.read_text()
    assert text.startswith("# Performance\n\nkept above\n") and "first" in text
    doc.write_text(text + "\nkept below\n")
    write_section(doc, body)
    text = doc.read_text()
    assert "first" not in text and body in text and text.count(peers.SECTION_START) == 1
    assert text.startswith("# Performance\n\nkept above\n") and text.endswith("kept below\n")


@pytest.mark.parametrize(("threads", "expected"), [(1, "loop"), (2, "threads")])
def test_ours_auto_runs_on_the_path_choose_path_picks_and_reports_it(threads, expected):
    before = torch.get_num_threads()
    try:
        r = run_case("ours:auto", tiny_config(row="1shot-fo"), repeats=0, warmup=1, threads=threads)
    finally:
        torch.set_num_threads(before)
    assert r["status"] == "ok" and r["path"] == expected  # a conv model on the CPU: threads when torch has >1
    assert "ours:auto" in peers.libraries.expand_libraries(["ours"])
    diff, _ = grad_diff(r["grads"], _case(GRAD_REFERENCE, "1shot-fo")["grads"])
    assert diff < 1e-5


def test_float32_and_float64_cases_solve_the_same_problem():
    m32, t32 = peers.make_problem(tiny_config())
    m64, t64 = peers.make_problem(tiny_config(dtype="float64"))
    assert t64.support_x.dtype == torch.float64 and torch.equal(t64.support_x, t32.support_x.double())
    assert all(torch.equal(a.double(), b) for a, b in zip(m32.parameters(), m64.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_error_line_and_exit_2(capsys):
    assert peers.main(["--device", "cuda", "--rows", "1shot-fo"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: device 'cuda'")


def test_the_command_compares_ours_auto_with_the_float64_reference(monkeypatch, tmp_path, capsys):
    """The whole command on a tiny case, its per-case processes run in this one (import cost)."""

    def in_process(cmd, **_):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = peers.main(cmd[3:])  # [python, -m, innerloop.bench.peers, ...]
        return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr="")

    before = torch.get_num_threads()
    monkeypatch.setattr(child, "subprocess", types.SimpleNamespace(run=in_process))
    try:
        assert peers.main(["--libraries", "pytorch", "ours:auto", "--rows", "1shot-fo", "--meta-batch", "2",
                           "--steps", "1", "--channels", "4", "--repeats", "0", "--threads", "1",
                           "--json", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(before)
    res = {r["library"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert res["ours:auto"]["path"] == "loop" and 0 <= res["ours:auto"]["grad_rel64"] < 1e-4
    assert 0 <= res["pytorch"]["grad_rel64"] < 1e-4 and res["pytorch"]["grad_rel64"] > 0  # float32 vs float64
    out = capsys.readouterr().out
    assert "ours: auto (loop)" in out and "fastest peer" in out and out.rstrip().splitlines()[-1].startswith(
        "worst row: ratio ")
