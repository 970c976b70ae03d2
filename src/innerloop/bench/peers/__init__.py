"""Peers benchmark: MAML meta-steps of learn2learn, higher and TorchOpt next to ours.

Median seconds per meta-step (forward, meta-gradient, Adam step), tasks/s and peak resident
memory of MAML on an Omniglot-shaped synthetic batch (1x28x28 inputs, 4-CONV with batch-statistics
BatchNorm, 5-way, 15 query per class, 5 inner SGD steps of lr 0.4, as in ``innerloop.bench``), for
each peer library, a hand-written plain-PyTorch reference and every execution path of ours,
``ours:auto`` first: the path the library itself picks (``choose_path(algo, "auto", device)``),
the column the summary compares with the fastest peer (ratio of seconds, peak memories).

Every library starts from the same weights (ours, :class:`innerloop.models.Conv4`, copied into an
equivalent plain ``nn.Module`` for the peers) and sees the same tasks, so their meta-gradients (of
the mean query loss with respect to the initial weights, and to the learning rates for Meta-SGD,
before the Adam step) are compared with ours: the largest absolute difference is reported; and
each one's distance from a float64 meta-gradient of the same problem (the float32 weights and tasks
cast to float64, one untimed step of the plain-PyTorch reference in its own process).

Each (library, row, meta-batch) runs in its own process, so the peak RSS (``ru_maxrss``) is that
library's alone. Nothing here asserts a time: it prints what it measured.

One job per module: :mod:`.case` (the problem every library solves), :mod:`.ours`,
:mod:`.plain`, :mod:`.with_learn2learn`, :mod:`.with_higher`, :mod:`.with_torchopt` (one
library's meta-step each), :mod:`.libraries` (names, versions, dispatch), :mod:`.measure` (one case
timed in this process), :mod:`.compare` (ours:auto against the fastest peer, per row),
:mod:`.table` (console and Markdown tables), :mod:`.cli` (the command, one process per case).
``--device`` and the memory readings live in :mod:`innerloop.bench.device`.
"""

from innerloop.bench.peers.case import ROWS, Config, NotInstalled, Row, Runner, Unsupported, make_problem, tiny_config
from innerloop.bench.peers.cli import machine_info, main
from innerloop.bench.peers.libraries import GRAD_REFERENCE, PEERS, REFERENCE, build, installed, library_version
from innerloop.bench.peers.measure import grad_diff, run_case
from innerloop.bench.peers.ours import OUR_PATHS, our_paths, ours_path_problem
from innerloop.bench.peers.table import SECTION_END, SECTION_START, markdown, write_section

__all__ = [
    "GRAD_REFERENCE",
    "OUR_PATHS",
    "PEERS",
    "REFERENCE",
    "ROWS",
    "SECTION_END",
    "SECTION_START",
    "Config",
    "NotInstalled",
    "Row",
    "Runner",
    "Unsupported",
    "build",
    "grad_diff",
    "installed",
    "library_version",
    "machine_info",
    "main",
    "make_problem",
    "markdown",
    "our_paths",
    "ours_path_problem",
    "run_case",
    "tiny_config",
    "write_section",
]
