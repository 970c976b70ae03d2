"""Files of a run: atomic writes, JSON that stays JSON, and checkpoints that cannot execute code.

* Every file is written to a temporary file in the same directory (``.NAME.*.tmp``), fsynced, then
  renamed over ``NAME``: a reader sees the old file or the new one, never half of one. A process
  killed mid-write leaves its temporary file behind; :func:`clean_stale_temps` removes them.
* JSON has no NaN or infinity. :func:`finite_json` writes ``null`` in their place and lists where
  they were (``"nonfinite": [...]``), so every line of ``metrics.jsonl`` stays valid JSON.
* Checkpoints hold tensors and plain data only (dicts, lists, tuples, str, int, float, bool, None)
  and are read with ``torch.load(weights_only=True)``: loading one never runs code from the file. A
  file that is empty, truncated, not a checkpoint or crafted gets one :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from innerloop import registry
from innerloop.errors import UserError
from innerloop.experiments import faults

#: version of the checkpoint layout (the ``format`` key); files written before it had none and the same layout
FORMAT = 1
TEMP_SUFFIX = ".tmp"


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not hold what a run needs."""


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        faults.point("file_write")  # the temporary file is complete, the rename not yet done
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def clean_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``directory``; return them.

    Call it only while holding the directory's lock (a live writer's temporary file is not stale)."""
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def finite_json(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float replaced by None, and the dotted paths where that happened."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "<value>"]
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], b = finite_json(v, f"{where}.{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(obj, list | tuple):
        out_list, bad = [], []
        for i, v in enumerate(obj):
            x, b = finite_json(v, f"{where}.{i}" if where else str(i))
            out_list.append(x)
            bad += b
        return out_list, bad
    return obj, []


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON for ``obj``; a dict with non-finite values gets them as null plus a ``nonfinite`` list."""
    clean, bad = finite_json(obj)
    if bad and isinstance(clean, dict):
        clean["nonfinite"] = bad
    return json.dumps(clean, indent=indent, allow_nan=False)


def save_torch(obj: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def save_csv(header: list[str], rows: list[list[Any]], path: str | Path) -> None:
    """A CSV file written atomically (``repr`` of floats, so the numbers round-trip exactly)."""
    def cell(v: Any) -> str:
        return repr(v) if isinstance(v, float) else str(v)
    text = "\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n"
    _atomic(Path(path), lambda f: f.write(text.encode()))


def save_text(text: str, path: str | Path) -> None:
    """Write a text file whole or not at all (a reader never sees half of it)."""
    _atomic(Path(path), lambda f: f.write(text.encode()))


def save_json(obj: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda f: f.write((json_text(obj, indent=2) + "\n").encode()))


def _reason(p: Path, e: BaseException) -> str:
    """What is wrong with the file, in a few words (torch's messages run to several paragraphs)."""
    if p.stat().st_size == 0:
        return "the file is empty"
    text = str(e)
    if isinstance(e, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "the file is truncated or damaged"
    if "GLOBAL" in text:  # a pickled object other than tensors and plain data: the unpickler refused it
        found = re.search(r"GLOBAL (\S+)", text)
        return "it holds an object other than tensors and plain data" + (f" ({found[1]})" if found else "")
    return "the file is not a torch checkpoint"


def load_torch(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only) onto the CPU, or raise :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, garbage, or objects other than tensors and plain data
        raise CheckpointError(f"cannot read checkpoint {p}: {_reason(p, e)}; nothing in it was executed") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {p}: it holds a {type(state).__name__}, not a checkpoint")
    return state


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _check(p: Path, state: dict, spec: dict[str, Any]) -> None:
    if state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"checkpoint {p} has format {state.get('format')!r}; this innerloop reads format "
                              f"{FORMAT}")
    for key, ok in spec.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {p} has no {key!r} entry (not an innerloop checkpoint, or damaged)")
        if not ok(state[key]):
            raise CheckpointError(f"checkpoint {p}: its {key!r} entry is not what a run writes "
                                  f"({type(state[key]).__name__})")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _byte_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1


#: what ``last.pt`` (everything to resume) and ``best.pt`` (best validation weights) must hold
LAST = {
    "iteration": _count,
    "algorithm": _tensor_dict,
    "optimizer": lambda v: v is None or isinstance(v, dict),
    "scheduler": lambda v: v is None or isinstance(v, dict),
    "generator": _byte_tensor,
    "torch_rng": _byte_tensor,
    "best_score": _number,
    "best_iteration": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= -1,
    "path": lambda v: isinstance(v, str) and v in registry.names("executor"),  # a registered executor
}
BEST = {"iteration": _count, "algorithm": _tensor_dict}


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read ``last.pt`` (``kind="last"``) or ``best.pt`` (``kind="best"``) and check its entries."""
    state = load_torch(path)
    _check(Path(path), state, LAST if kind == "last" else BEST)
    return state
