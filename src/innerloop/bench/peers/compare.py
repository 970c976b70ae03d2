"""How ours compares with the peers, row by row: the speed ratio of ``ours:auto`` to the fastest
peer, the two peak memories, and each library's meta-gradient distance from the float64
reference. Pure functions of the result dicts, so the tables can be checked without timing."""

from __future__ import annotations

from typing import NamedTuple

from innerloop.bench.device import peak_mb
from innerloop.bench.peers.case import ROWS
from innerloop.bench.peers.libraries import PEERS, REFERENCE, column_title

#: The column the summary compares: our MAML on the path the library picks by itself.
AUTO_LIB = "ours:auto"
#: What ``ours:auto`` is compared with: every peer library and the hand-written loop.
COMPARED = [*PEERS, REFERENCE]


class Comparison(NamedTuple):
    peer: str  # the fastest of COMPARED in this row
    ratio: float  # peer's s/meta-step ÷ ours:auto's (> 1: ours is faster)
    ours_mb: float
    peer_mb: float


def by_case(results: list[dict]) -> dict[tuple[str, int], dict[str, dict]]:
    """``{(row, meta_batch): {library: result}}`` in the order the results came."""
    out: dict[tuple[str, int], dict[str, dict]] = {}
    for r in results:
        out.setdefault((r["row"], r["meta_batch"]), {})[r["library"]] = r
    return out


def compare(case: dict[str, dict]) -> Comparison | None:
    """``None`` when ``ours:auto`` or every peer lacks a measurement in this row."""
    ours = case.get(AUTO_LIB)
    peers = [case[lib] for lib in COMPARED if lib in case and case[lib]["status"] == "ok"]
    if ours is None or ours["status"] != "ok" or not peers:
        return None
    best = min(peers, key=lambda r: r["median_s"])
    return Comparison(best["library"], best["median_s"] / ours["median_s"], peak_mb(ours), peak_mb(best))


def worst(results: list[dict]) -> tuple[tuple[str, int], Comparison] | None:
    """The (row, meta-batch) where ours:auto fares worst against its fastest peer."""
    rows = [(key, c) for key, case in by_case(results).items() if (c := compare(case)) is not None]
    return min(rows, key=lambda kc: kc[1].ratio) if rows else None


def auto_title(results: list[dict]) -> str:
    """``ours: auto (threads)``: the path(s) auto resolved to in these results."""
    paths = list(dict.fromkeys(r["path"] for r in results if r["library"] == AUTO_LIB and r.get("path")))
    return column_title(AUTO_LIB) + (f" ({', '.join(paths)})" if paths else "")


def title(lib: str, results: list[dict]) -> str:
    return auto_title(results) if lib == AUTO_LIB else column_title(lib)


def fmt_ratio(c: Comparison | None) -> str:
    return f"{c.ratio:.2f}" if c else "–"


def fmt_peer(c: Comparison | None) -> str:
    return column_title(c.peer) if c else "–"


def fmt_memory(c: Comparison | None) -> str:
    return f"{c.ours_mb:.0f} / {c.peer_mb:.0f}" if c else "–"


def fmt_grad64(r: dict | None) -> str:
    """max |Δg| / max |g_ref| against the float64 reference (``grad_rel64``)."""
    if r is None or r.get("grad_rel64") is None:
        return "–" if r is None or r["status"] == "ok" else r["status"]
    return f"{r['grad_rel64']:.1e}"


def worst_line(results: list[dict]) -> str:
    w = worst(results)
    if w is None:
        return "worst row: – (ours: auto or every peer missing)"
    (row, mb), c = w
    return (f"worst row: ratio {c.ratio:.2f} ({ROWS[row].label}, meta-batch {mb}; fastest peer "
            f"{column_title(c.peer)}; ratio = its s/meta-step ÷ ours: auto's)")
