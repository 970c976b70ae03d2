"""Rewrite one tagged section of a Markdown file (the benchmarks write their tables this way)."""

from __future__ import annotations

import re
from pathlib import Path

from innerloop.experiments.checkpoint import save_text


def write_section(path: Path, text: str, tag: str = "memory") -> None:
    """Replace the text between ``<!-- tag:start -->`` and ``<!-- tag:end -->`` (appended if absent)."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    body = f"{start}\n{text}{end}\n"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        new = re.sub(re.escape(start) + ".*?" + re.escape(end) + "\n?", lambda _: body, old, flags=re.S)
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + body
    save_text(new, path)
