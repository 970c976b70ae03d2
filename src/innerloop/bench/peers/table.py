"""The results as tables: one line per measured case and a summary on the console, and the
Markdown section of docs/performance.md (between its peers markers)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from innerloop.bench.device import memory_kind, peak_mb
from innerloop.bench.peers.case import ROWS, Config
from innerloop.bench.peers.compare import (
    AUTO_LIB,
    by_case,
    compare,
    fmt_grad64,
    fmt_memory,
    fmt_peer,
    fmt_ratio,
    title,
    worst_line,
)
from innerloop.bench.peers.libraries import GRAD_REFERENCE, PEERS, REFERENCE, column_title
from innerloop.experiments.checkpoint import save_text

SECTION_START = "<!-- peers:start -->"
SECTION_END = "<!-- peers:end -->"
SECTION_TITLE = "## Peers benchmark (learn2learn, higher, TorchOpt)"


def _fmt_cell(r: dict) -> str:
    return f"{r['median_s']:.3f}" if r["status"] == "ok" else r["status"]


def _fmt_diff(r: dict) -> str:
    if r["library"] == GRAD_REFERENCE:
        return "(reference)"
    if r.get("grad_diff") is None:
        return "–"
    return f"{r['grad_diff']:.1e} ({r['grad_rel']:.1e})"


def case_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}" + (f": {r['note']}" if r.get("note") else "")
    return (f"{r['median_s']:>9.3f} s  {r['tasks_per_s']:>7.1f} tasks/s  {peak_mb(r):>6.0f} MB  "
            f"max|Δg| {_fmt_diff(r)}  vs float64 {fmt_grad64(r)}")


def _explain(results: list[dict]) -> str:
    return (f"ratio = the fastest peer's s / meta-step ÷ {title(AUTO_LIB, results)}'s (peers: "
            f"{', '.join(column_title(p) for p in [*PEERS, REFERENCE])}; > 1: ours is faster); memory: "
            f"{memory_kind(results)} in MB, {column_title(AUTO_LIB)} / that peer")


def markdown(results: list[dict], info: dict, libs: list[str], command: str) -> str:
    """The section between the peers markers of docs/performance.md."""
    versions = ", ".join(f"{column_title(lib)} {v}" for lib in libs if lib in PEERS
                         for v in [next((r["version"] for r in results if r["library"] == lib and r.get("version")),
                                        "not installed")])
    ls, le = info["load_start"], info.get("load_end", ("?",) * 3)
    cfg = next((r["config"] for r in results if "config" in r), asdict(Config()))
    steps = f"{cfg['steps']} inner SGD step" + ("s" if cfg["steps"] != 1 else "")
    out = [
        f"Written by `{command}` on {info['date']}.",
        "",
        f"Machine: {info['cpu']} ({info['logical_cpus']} logical CPUs); torch {info['torch']}, Python "
        f"{info['python']}, torch.set_num_threads({info['threads']}) in each case's process, device "
        f"{info.get('device', 'cpu')}; load average (1/5/15 min) {ls[0]:.2f}/{ls[1]:.2f}/{ls[2]:.2f} at the start, "
        + (f"{le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f} at the end." if isinstance(le[0], float) else "?"),
        "",
        *([f"Versions: {versions}.", ""] if versions else []),
        f"Workload: {cfg.get('dtype', 'float32')}, 1x28x28 synthetic inputs, 4-CONV-{cfg['channels']} with "
        "batch-statistics BatchNorm, "
        f"{cfg['n_way']}-way, {cfg['query']} query per class, {steps} of lr {cfg['lr']}, "
        f"Adam (lr {cfg['outer_lr']}) outer step. Median seconds per meta-step (forward, meta-gradient, "
        f"Adam step) over {info.get('repeats', '?')} timed steps after {info.get('warmup', '?')} warm-up "
        "step(s); peak RSS of the process that ran the case. "
        f"max |Δg|: largest absolute difference of the meta-gradient at the initial weights from "
        f"`{GRAD_REFERENCE}` on the same tasks (in brackets: divided by the largest |g| of `{GRAD_REFERENCE}`). "
        "vs float64: max |Δg| / max |g_ref| from a float64 meta-gradient of the same problem (the float32 weights "
        f"and tasks cast to float64), computed untimed by {column_title(REFERENCE)} in its own process. "
        f"{_explain(results)}.",
        "",
    ]
    for mb in dict.fromkeys(r["meta_batch"] for r in results):
        sub = [r for r in results if r["meta_batch"] == mb]
        rows = list(dict.fromkeys(r["row"] for r in sub))
        cases = by_case(sub)
        heads = [title(lib, results) for lib in libs]
        out += [f"**Seconds per meta-step, meta-batch {mb}**", "",
                "| row | " + " | ".join(heads) + " | fastest peer | ratio | memory (MB) |",
                "|---|" + "---|" * (len(libs) + 3)]
        for row in rows:
            case = cases[(row, mb)]
            c = compare(case)
            out.append(f"| {ROWS[row].label} | " + " | ".join(_fmt_cell(case[lib]) if lib in case else "–"
                                                             for lib in libs)
                       + f" | {fmt_peer(c)} | {fmt_ratio(c)} | {fmt_memory(c)} |")
        out += ["", f"**Meta-gradient vs the float64 reference (max |Δg| / max |g_ref|), meta-batch {mb}**", "",
                "| row | " + " | ".join(heads) + " |", "|---|" + "---|" * len(libs)]
        for row in rows:
            case = cases[(row, mb)]
            out.append(f"| {ROWS[row].label} | " + " | ".join(fmt_grad64(case.get(lib)) for lib in libs) + " |")
        out += ["", f"<details><summary>All measurements, meta-batch {mb}</summary>", "",
                f"| row | library | s / meta-step | tasks / s | {memory_kind(results)} (MB) | "
                "max abs Δ meta-gradient (rel.) | vs float64 |",
                "|---|---|---|---|---|---|---|"]
        for r in sub:
            name = title(r["library"], [r])
            if r["status"] == "ok":
                out.append(f"| {ROWS[r['row']].label} | {name} | {r['median_s']:.3f} | "
                           f"{r['tasks_per_s']:.1f} | {peak_mb(r):.0f} | {_fmt_diff(r)} | {fmt_grad64(r)} |")
            else:
                note = f" ({r['note']})" if r.get("note") else ""
                out.append(f"| {ROWS[r['row']].label} | {name} | {r['status']}{note} | | | | |")
        out += ["", "</details>", ""]
    out.append(worst_line(results) + ".")
    return "\n".join(out).rstrip("\n")


def write_section(path: str | Path, body: str) -> None:
    """Replace what lies between the peers markers of ``path`` with ``body`` (append a titled
    section with the markers when they are missing; create the file if need be)."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    i, j = text.find(SECTION_START), text.find(SECTION_END)
    if i >= 0 and j > i:
        new = text[: i + len(SECTION_START)] + "\n" + body + "\n" + text[j:]
    else:
        sep = "\n\n" if text.strip() else ""
        new = text.rstrip("\n") + sep + f"{SECTION_TITLE}\n\n{SECTION_START}\n{body}\n{SECTION_END}\n"
    save_text(new, p)


def summary(results: list[dict], libs: list[str], rows: list[str], meta_batches: list[int]) -> str:
    """For the console, per meta-batch: seconds per meta-step (rows x libraries) with the fastest
    peer, the ratio and the memories; the meta-gradients' distance from the float64 reference; and
    the worst row's ratio at the end."""
    cases = by_case(results)
    heads = [title(lib, results) for lib in libs]
    w = max(15, *(len(h) + 2 for h in heads))
    out = [_explain(results), ""]
    for mb in meta_batches:
        out.append(f"s / meta-step, meta-batch {mb}")
        out.append(f"{'row':<28}" + "".join(f"{h:>{w}}" for h in heads)
                   + f"{'fastest peer':>15}{'ratio':>7}{'memory (MB)':>14}")
        for row in rows:
            case = cases.get((row, mb), {})
            c = compare(case)
            out.append(f"{ROWS[row].label:<28}" + "".join(f"{_fmt_cell(case[lib]) if lib in case else '–':>{w}}"
                                                          for lib in libs)
                       + f"{fmt_peer(c):>15}{fmt_ratio(c):>7}{fmt_memory(c):>14}")
        out.append(f"max |Δg| / max |g_ref| vs the float64 reference, meta-batch {mb}")
        out.append(f"{'row':<28}" + "".join(f"{h:>{w}}" for h in heads))
        for row in rows:
            case = cases.get((row, mb), {})
            out.append(f"{ROWS[row].label:<28}" + "".join(f"{fmt_grad64(case.get(lib)):>{w}}" for lib in libs))
        out.append("")
    out.append(worst_line(results))
    return "\n".join(out)
