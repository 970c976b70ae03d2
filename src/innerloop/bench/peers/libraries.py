"""Which libraries there are: their names, how a case is built for each, whether they are
installed and at which version."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable

import torch

from innerloop import __version__
from innerloop.bench.peers.case import Config, NotInstalled, Runner
from innerloop.bench.peers.ours import build_ours, our_paths
from innerloop.bench.peers.plain import build_plain
from innerloop.bench.peers.with_higher import build_higher
from innerloop.bench.peers.with_learn2learn import build_learn2learn
from innerloop.bench.peers.with_torchopt import build_torchopt

#: Peer libraries: column name -> (import name, display name).
PEERS: dict[str, tuple[str, str]] = {
    "learn2learn": ("learn2learn", "learn2learn"),
    "higher": ("higher", "higher"),
    "torchopt": ("torchopt", "TorchOpt"),
}
#: The hand-written plain-PyTorch reference (no library): what the others are checked against in tests.
REFERENCE = "pytorch"
#: Whose meta-gradient the others are compared with.
GRAD_REFERENCE = "ours:loop"

BUILDERS: dict[str, Callable[[Config], Runner]] = {
    "learn2learn": build_learn2learn,
    "higher": build_higher,
    "torchopt": build_torchopt,
    REFERENCE: build_plain,
}


def build(lib: str, cfg: Config) -> Runner:
    if lib.startswith("ours:"):
        return build_ours(cfg, lib.split(":", 1)[1])
    if lib not in BUILDERS:
        raise ValueError(f"unknown library {lib!r}")
    if not installed(lib):
        raise NotInstalled(lib)
    return BUILDERS[lib](cfg)


def library_version(lib: str) -> str:
    if lib.startswith("ours"):
        return __version__
    if lib == REFERENCE:
        return torch.__version__
    try:
        return importlib.metadata.version(PEERS[lib][0])
    except importlib.metadata.PackageNotFoundError:
        return ""


def installed(lib: str) -> bool:
    return lib not in PEERS or importlib.util.find_spec(PEERS[lib][0]) is not None


def expand_libraries(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n == "ours":
            out += [f"ours:{p}" for p in our_paths()]
        elif n.startswith("ours:") or n in PEERS or n == REFERENCE:
            out.append(n)
        else:
            raise SystemExit(f"unknown library {n!r}; expected ours, ours:PATH, {REFERENCE} or one of {list(PEERS)}")
    return list(dict.fromkeys(out))


def column_title(lib: str) -> str:
    if lib.startswith("ours:"):
        return f"ours: {lib.split(':', 1)[1]}"
    if lib == REFERENCE:
        return "plain PyTorch"
    return PEERS[lib][1]
