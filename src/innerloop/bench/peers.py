"""Peers benchmark: MAML meta-steps of learn2learn, higher and TorchOpt next to ours.

Median seconds per meta-step (forward, meta-gradient, Adam step), tasks/s and peak resident
memory of MAML on an Omniglot-shaped synthetic batch (1x28x28 inputs, 4-CONV with batch-statistics
BatchNorm, 5-way, 15 query per class, 5 inner SGD steps of lr 0.4, as in ``innerloop.bench``), for
each peer library, a hand-written plain-PyTorch reference and every execution path of ours.

Every library starts from the same weights (ours, :class:`innerloop.models.Conv4`, copied into an
equivalent plain ``nn.Module`` for the peers) and sees the same tasks, so their meta-gradients (of
the mean query loss with respect to the initial weights, and to the learning rates for Meta-SGD,
before the Adam step) are compared with ours: the largest absolute difference is reported.

Each (library, row, meta-batch) runs in its own process, so the peak RSS (``ru_maxrss``) is that
library's alone. Nothing here asserts a time: it prints what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.models import Conv4
from innerloop.types import Task

#: Our execution paths, one column each (``--libraries ours``). Extend this list when
#: ``MetaAlgorithm`` gains a path; paths in the algorithm's module-level ``PATHS`` are added after
#: these (see :func:`our_paths`), and a listed path the installed algorithm does not know (it raises
#: ``ValueError``, or ``PATHS`` omits it) is reported as "n/a" instead of failing.
OUR_PATHS: list[str] = ["loop", "threads", "vmap"]

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

SECTION_START = "<!-- peers:start -->"
SECTION_END = "<!-- peers:end -->"
SECTION_TITLE = "## Peers benchmark (learn2learn, higher, TorchOpt)"


@dataclass(frozen=True)
class Row:
    shot: int
    first_order: bool
    rule: str  # "sgd" (MAML) or "meta_sgd" (per-parameter learned learning rates)
    label: str


ROWS: dict[str, Row] = {
    "1shot-so": Row(1, False, "sgd", "1-shot, 2nd order"),
    "1shot-fo": Row(1, True, "sgd", "1-shot, 1st order"),
    "5shot-so": Row(5, False, "sgd", "5-shot, 2nd order"),
    "5shot-fo": Row(5, True, "sgd", "5-shot, 1st order"),
    "metasgd-1shot-so": Row(1, False, "meta_sgd", "Meta-SGD, 1-shot, 2nd order"),
}


@dataclass(frozen=True)
class Config:
    """One benchmark case apart from the library."""

    row: str = "1shot-so"
    meta_batch: int = 8
    steps: int = 5
    lr: float = 0.4
    channels: int = 64
    n_way: int = 5
    query: int = 15
    outer_lr: float = 1e-3
    dtype: str = "float32"  # of weights and data (float64 tells rounding from real differences)

    @property
    def spec(self) -> Row:
        return ROWS[self.row]


class Unsupported(Exception):
    """The library cannot express this case (reported as "n/a")."""


class NotInstalled(Exception):
    """The library is not importable here (reported as "not installed")."""


class Runner(NamedTuple):
    """A library's meta-step for one case."""

    meta_parameters: list[Tensor]  # what Adam updates
    meta_backward: Callable[[], None]  # accumulate the meta-gradient of the mean query loss
    named_grads: Callable[[], dict[str, Tensor]]  # θ0 grads by our names; "alpha:<name>" for Meta-SGD


# ---- the problem: same weights, same tasks for every library ----------------------------------


def make_problem(cfg: Config) -> tuple[Conv4, Task]:
    """Our Conv4 at its seed-0 initialisation and a synthetic meta-batch (same seeds as ``innerloop.bench``)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shot, n_way, q, b = cfg.spec.shot, cfg.n_way, cfg.query, cfg.meta_batch
    model = Conv4((1, 28, 28), n_way, channels=cfg.channels)
    sx = torch.rand(b, n_way * shot, 1, 28, 28, generator=g)
    qx = torch.rand(b, n_way * q, 1, 28, 28, generator=g)
    sy = torch.arange(n_way).repeat_interleave(shot).expand(b, -1).contiguous()
    qy = torch.arange(n_way).repeat_interleave(q).expand(b, -1).contiguous()
    return model, Task(sx, sy, qx, qy)


class PlainConv4(nn.Module):
    """The same network as ``Conv4`` built from stock layers (``nn.BatchNorm2d`` without running
    statistics, so it always normalises with the batch statistics), for the peer libraries."""

    def __init__(self, channels: int, n_way: int, features: int, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for _ in range(depth):
            layers += [nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels, track_running_stats=False),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c = channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(features, n_way)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def plain_copy(model: Conv4, cfg: Config) -> PlainConv4:
    """A :class:`PlainConv4` holding a copy of ``model``'s weights (parameters in the same order)."""
    plain = PlainConv4(cfg.channels, cfg.n_way, model.head.in_features)
    with torch.no_grad():
        for (name, src), dst in zip(model.named_parameters(), plain.parameters(), strict=True):
            if src.shape != dst.shape:
                raise RuntimeError(f"{name}: shape {tuple(src.shape)} vs {tuple(dst.shape)} in the plain copy")
            dst.copy_(src)
    return plain


def param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _grads_by_name(names: list[str], params, alphas=None) -> dict[str, Tensor]:
    out = {n: p.grad for n, p in zip(names, params, strict=True)}
    if alphas is not None:
        out.update({f"alpha:{n}": a.grad for n, a in zip(names, alphas, strict=True)})
    return out


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(-1) == y).to(out.dtype).mean()


# ---- ours -------------------------------------------------------------------------------------


def declared_paths() -> list[str] | None:
    """The execution paths ``innerloop.algorithms`` lists in a module-level constant, if it has one."""
    import innerloop.algorithms as algorithms
    from innerloop.algorithms import base

    for mod in (base, algorithms):
        for attr in ("EXECUTION_PATHS", "PATHS"):
            v = getattr(mod, attr, None)
            if isinstance(v, (list, tuple, set, frozenset, dict)):
                return [str(p) for p in v]
    return None


def our_paths() -> list[str]:
    """:data:`OUR_PATHS`, then any path the installed algorithm declares that it does not list."""
    return list(dict.fromkeys([*OUR_PATHS, *(declared_paths() or [])]))


def _ours(cfg: Config, path: str) -> Runner:
    from innerloop import MAML, SGD, MetaSGD
    from innerloop.params import safe_key

    known = declared_paths()
    if known is not None and path not in known:
        raise Unsupported(f"execution path {path!r} not in this version ({', '.join(known)})")
    model, batch = make_problem(cfg)
    names = param_names(model)
    if cfg.spec.rule == "meta_sgd":
        rule = MetaSGD({n: p.shape for n, p in model.named_parameters()}, cfg.lr)
    else:
        rule = SGD(cfg.lr)
    algo = MAML(model, rule, loss_fn=F.cross_entropy, metric_fn=_accuracy, inner_steps=cfg.steps,
                first_order=cfg.spec.first_order)

    def meta_backward():
        try:
            algo.meta_backward(batch, path)
        except ValueError as e:  # an older algorithm that does not know this path
            if repr(path) in str(e) or "execution path" in str(e):
                raise Unsupported(str(e)) from e
            raise

    def named_grads():
        alphas = [rule.alpha[safe_key(n)] for n in names] if cfg.spec.rule == "meta_sgd" else None
        return _grads_by_name(names, model.parameters(), alphas)

    return Runner(algo.meta_parameters(), meta_backward, named_grads)


# ---- plain PyTorch reference -------------------------------------------------------------------


def reference_forward(params: list[Tensor], x: Tensor, eps: float = 1e-5) -> Tensor:
    """Conv4 written out with ``torch.nn.functional`` (params in ``Conv4.parameters()`` order)."""
    *blocks, head_w, head_b = params
    for i in range(0, len(blocks), 4):
        w, b, gamma, beta = blocks[i : i + 4]
        x = F.conv2d(x, w, b, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), head_w, head_b)


def _pytorch(cfg: Config) -> Runner:
    model, batch = make_problem(cfg)
    names = param_names(model)
    theta = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in theta] if cfg.spec.rule == "meta_sgd" else None
    second_order = not cfg.spec.first_order

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            fast = list(theta)
            lrs = alphas if alphas is not None else [cfg.lr] * len(fast)
            for _ in range(cfg.steps):
                loss = F.cross_entropy(reference_forward(fast, sx), sy)
                grads = torch.autograd.grad(loss, fast, create_graph=second_order)
                fast = [p - a * g for p, a, g in zip(fast, lrs, grads, strict=True)]
            (F.cross_entropy(reference_forward(fast, qx), qy) / n).backward()

    return Runner(theta + (alphas or []), meta_backward, lambda: _grads_by_name(names, theta, alphas))


# ---- learn2learn ------------------------------------------------------------------------------


def import_learn2learn_algorithms() -> types.ModuleType:
    """``learn2learn.algorithms``. Its package ``__init__`` also imports learn2learn's vision and
    gym modules (torchvision, gym, scipy, requests); when those are missing, the algorithms (which
    need only torch) are imported without running the package ``__init__``."""
    spec = importlib.util.find_spec("learn2learn")
    if spec is None:
        raise NotInstalled("learn2learn")
    try:
        import learn2learn

        return learn2learn.algorithms
    except Exception:  # ImportError, or a broken optional dependency (a CUDA-only torchvision)
        for k in [k for k in sys.modules if k == "learn2learn" or k.startswith("learn2learn.")]:
            del sys.modules[k]
        pkg = types.ModuleType("learn2learn")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__spec__ = spec
        sys.modules["learn2learn"] = pkg
        return importlib.import_module("learn2learn.algorithms")


def _learn2learn(cfg: Config) -> Runner:
    algorithms = import_learn2learn_algorithms()
    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    fo = cfg.spec.first_order
    if cfg.spec.rule == "meta_sgd":
        meta = algorithms.MetaSGD(plain, lr=cfg.lr, first_order=fo)
        alphas = list(meta.lrs)
    else:
        meta = algorithms.MAML(plain, lr=cfg.lr, first_order=fo)
        alphas = None

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            learner = meta.clone()
            for _ in range(cfg.steps):
                learner.adapt(F.cross_entropy(learner(sx), sy))
            (F.cross_entropy(learner(qx), qy) / n).backward()

    return Runner(list(meta.parameters()), meta_backward, lambda: _grads_by_name(names, plain.parameters(), alphas))


# ---- higher -----------------------------------------------------------------------------------


def _higher(cfg: Config) -> Runner:
    if importlib.util.find_spec("higher") is None:
        raise NotInstalled("higher")
    import higher

    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    params = list(plain.parameters())
    # one parameter group per tensor, so that Meta-SGD can override each group's lr with a tensor
    inner_opt = torch.optim.SGD([{"params": [p]} for p in params], lr=cfg.lr)
    meta_sgd = cfg.spec.rule == "meta_sgd"
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in params] if meta_sgd else None
    fo = cfg.spec.first_order
    # First order: the idiomatic form detaches the fast weights (track_higher_grads=False) and copies
    # the query gradient of the adapted weights onto θ0. With Meta-SGD the path to the learning
    # rates must stay, so the fast weights are tracked and only the support gradients detached.
    detach_all = fo and not meta_sgd
    grad_callback = (lambda gs: [g.detach() for g in gs]) if fo and meta_sgd else None

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            with higher.innerloop_ctx(plain, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not detach_all) as (fmodel, diffopt):
                for _ in range(cfg.steps):
                    kw = {"override": {"lr": alphas}} if alphas is not None else {}
                    if grad_callback is not None:
                        kw["grad_callback"] = grad_callback
                    diffopt.step(F.cross_entropy(fmodel(sx), sy), **kw)
                qloss = F.cross_entropy(fmodel(qx), qy) / n
                if detach_all:
                    for p, g in zip(params, torch.autograd.grad(qloss, list(fmodel.parameters())), strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    qloss.backward()

    return Runner(params + (alphas or []), meta_backward, lambda: _grads_by_name(names, params, alphas))


# ---- TorchOpt ---------------------------------------------------------------------------------


def _torchopt(cfg: Config) -> Runner:
    if importlib.util.find_spec("torchopt") is None:
        raise NotInstalled("torchopt")
    import torchopt

    model, batch = make_problem(cfg)
    names = param_names(model)
    plain = plain_copy(model, cfg)
    pnames = param_names(plain)
    theta = tuple(plain.parameters())
    meta_sgd = cfg.spec.rule == "meta_sgd"
    # torchopt.sgd takes one scalar lr: Meta-SGD's per-element update is written as a pytree and
    # applied with torchopt.apply_updates
    alphas = [nn.Parameter(torch.full_like(p, cfg.lr)) for p in theta] if meta_sgd else None
    inner = torchopt.sgd(lr=cfg.lr)
    second_order = not cfg.spec.first_order

    def fmodel(params, x):
        return torch.func.functional_call(plain, dict(zip(pnames, params, strict=True)), (x,))

    def meta_backward():
        n = batch.num_tasks
        for i in range(n):
            sx, sy, qx, qy = batch.index(i)
            params = theta
            state = inner.init(params)
            for _ in range(cfg.steps):
                loss = F.cross_entropy(fmodel(params, sx), sy)
                grads = torch.autograd.grad(loss, params, create_graph=second_order)
                if alphas is not None:
                    updates = tuple(-a * g for a, g in zip(alphas, grads, strict=True))
                else:
                    updates, state = inner.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            (F.cross_entropy(fmodel(params, qx), qy) / n).backward()

    return Runner(list(theta) + (alphas or []), meta_backward, lambda: _grads_by_name(names, theta, alphas))


BUILDERS: dict[str, Callable[[Config], Runner]] = {
    "learn2learn": _learn2learn,
    "higher": _higher,
    "torchopt": _torchopt,
    REFERENCE: _pytorch,
}


def build(lib: str, cfg: Config) -> Runner:
    if lib.startswith("ours:"):
        return _ours(cfg, lib.split(":", 1)[1])
    if lib not in BUILDERS:
        raise ValueError(f"unknown library {lib!r}")
    if lib in PEERS and importlib.util.find_spec(PEERS[lib][0]) is None:
        raise NotInstalled(lib)
    return BUILDERS[lib](cfg)


def library_version(lib: str) -> str:
    if lib.startswith("ours"):
        import innerloop

        return innerloop.__version__
    if lib == REFERENCE:
        return torch.__version__
    try:
        return importlib.metadata.version(PEERS[lib][0])
    except importlib.metadata.PackageNotFoundError:
        return ""


def installed(lib: str) -> bool:
    return lib not in PEERS or importlib.util.find_spec(PEERS[lib][0]) is not None


def ours_path_problem(path: str) -> str | None:
    """Why our algorithm cannot run execution ``path`` (``None`` if it can): the module-level list of
    paths when there is one, else one step of a one-task toy problem in this process."""
    known = declared_paths()
    if known is not None:
        return None if path in known else f"execution path {path!r} not in this version ({', '.join(known)})"
    try:
        r = run_case(f"ours:{path}", tiny_config(meta_batch=1, channels=2), repeats=0, warmup=1)
    except Exception:  # anything else is for the case's own process to report
        return None
    return r["note"] if r["status"] != "ok" else None


# ---- one case ---------------------------------------------------------------------------------


def run_case(lib: str, cfg: Config, *, repeats: int = 5, warmup: int = 1, threads: int | None = None,
             grad_out: str | None = None) -> dict:
    """Time ``repeats`` meta-steps of ``lib`` after ``warmup`` untimed ones (at least one: the first
    step also records the meta-gradient at the initial weights, saved to ``grad_out``).

    Returns a result dict; ``status`` is "ok", "not installed" or "n/a" (with a ``note``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    res = {"library": lib, "row": cfg.row, "meta_batch": cfg.meta_batch, "version": library_version(lib),
           "threads": torch.get_num_threads(), "config": asdict(cfg)}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, cfg.dtype))  # weights, data, learning rates
    try:
        return _timed(lib, cfg, res, repeats, warmup, grad_out)
    finally:
        torch.set_default_dtype(previous)


def _timed(lib: str, cfg: Config, res: dict, repeats: int, warmup: int, grad_out: str | None) -> dict:
    with warnings.catch_warnings():
        # the peers' own deprecation notices (old torch APIs) are not what is measured here
        warnings.simplefilter("ignore")
        try:
            runner = build(lib, cfg)
            opt = torch.optim.Adam(runner.meta_parameters, lr=cfg.outer_lr)

            def step():
                opt.zero_grad(set_to_none=True)
                runner.meta_backward()

            step()
        except NotInstalled:
            return {**res, "status": "not installed", "note": ""}
        except Unsupported as e:
            return {**res, "status": "n/a", "note": str(e)}
        grads = {k: (v.detach().clone() if v is not None else None) for k, v in runner.named_grads().items()}
        if grad_out:
            torch.save(grads, grad_out)
        opt.step()
        for _ in range(max(warmup, 1) - 1):
            step()
            opt.step()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            opt.step()
            times.append(time.perf_counter() - t)
    med = statistics.median(times) if times else float("nan")
    return {**res, "status": "ok", "note": "", "median_s": med, "tasks_per_s": cfg.meta_batch / med,
            "times_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "grads": grads if not grad_out else None}


def grad_diff(grads: dict[str, Tensor | None], ref: dict[str, Tensor | None]) -> tuple[float, float]:
    """``(max |g - g_ref|, that divided by max |g_ref|)`` over every tensor of ``ref`` (a missing or
    ``None`` gradient counts as zeros)."""
    if set(grads) != set(ref):
        raise ValueError(f"different gradient keys: {sorted(set(grads) ^ set(ref))}")
    diff = scale = 0.0
    for k, r in ref.items():
        g = grads[k]
        r = torch.zeros(()) if r is None else r.double()
        g = torch.zeros(()) if g is None else g.double()
        diff = max(diff, (g - r).abs().max().item())
        scale = max(scale, r.abs().max().item())
    return diff, diff / scale if scale > 0 else float("nan")


# ---- the parent: one subprocess per case ------------------------------------------------------


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


def _child(lib: str, cfg: Config, a: argparse.Namespace, grad_out: str) -> dict:
    cmd = [sys.executable, "-m", "innerloop.bench.peers", "--case", lib, cfg.row, str(cfg.meta_batch),
           "--grad-out", grad_out, "--steps", str(cfg.steps), "--lr", repr(cfg.lr), "--channels", str(cfg.channels),
           "--dtype", cfg.dtype,
           "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    base = {"library": lib, "row": cfg.row, "meta_batch": cfg.meta_batch, "version": library_version(lib)}
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        why = f"signal {-r.returncode}" if r.returncode < 0 else (err[-1] if err else f"exit {r.returncode}")
        return {**base, "status": "failed", "note": why[:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_start": os.getloadavg()}


def _fmt_cell(r: dict) -> str:
    return f"{r['median_s']:.3f}" if r["status"] == "ok" else r["status"]


def _fmt_diff(r: dict) -> str:
    if r["library"] == GRAD_REFERENCE:
        return "(reference)"
    if r.get("grad_diff") is None:
        return "–"
    return f"{r['grad_diff']:.1e} ({r['grad_rel']:.1e})"


def _fmt_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}" + (f": {r['note']}" if r.get("note") else "")
    return (f"{r['median_s']:>9.3f} s  {r['tasks_per_s']:>7.1f} tasks/s  {r['peak_rss_mb']:>6.0f} MB  "
            f"max|Δg| {_fmt_diff(r)}")


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
        f"{info['python']}, torch.set_num_threads({info['threads']}) in each case's process; load average "
        f"(1/5/15 min) {ls[0]:.2f}/{ls[1]:.2f}/{ls[2]:.2f} at the start, "
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
        f"`{GRAD_REFERENCE}` on the same tasks (in brackets: divided by the largest |g| of `{GRAD_REFERENCE}`).",
        "",
    ]
    for mb in dict.fromkeys(r["meta_batch"] for r in results):
        sub = [r for r in results if r["meta_batch"] == mb]
        rows = list(dict.fromkeys(r["row"] for r in sub))
        out += [f"**Seconds per meta-step, meta-batch {mb}**", "",
                "| row | " + " | ".join(column_title(lib) for lib in libs) + " |",
                "|---|" + "---|" * len(libs)]
        for row in rows:
            cells = {r["library"]: _fmt_cell(r) for r in sub if r["row"] == row}
            out.append(f"| {ROWS[row].label} | " + " | ".join(cells.get(lib, "–") for lib in libs) + " |")
        out += ["", f"<details><summary>All measurements, meta-batch {mb}</summary>", "",
                "| row | library | s / meta-step | tasks / s | peak RSS (MB) | max abs Δ meta-gradient (rel.) |",
                "|---|---|---|---|---|---|"]
        for r in sub:
            if r["status"] == "ok":
                out.append(f"| {ROWS[r['row']].label} | {column_title(r['library'])} | {r['median_s']:.3f} | "
                           f"{r['tasks_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {_fmt_diff(r)} |")
            else:
                note = f" ({r['note']})" if r.get("note") else ""
                out.append(f"| {ROWS[r['row']].label} | {column_title(r['library'])} | {r['status']}{note} | | | |")
        out += ["", "</details>", ""]
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
    p.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m innerloop.bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--libraries", nargs="+", default=[*PEERS, REFERENCE, "ours"],
                   help=f"any of {', '.join(PEERS)}, {REFERENCE}, ours (every path: OUR_PATHS and the algorithm's "
                        "PATHS) or ours:PATH")
    p.add_argument("--meta-batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--repeats", type=int, default=5, help="timed meta-steps per case")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed meta-steps before them (at least 1: the first records the meta-gradient)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each case's process")
    p.add_argument("--steps", type=int, default=5, help="inner SGD steps")
    p.add_argument("--lr", type=float, default=0.4, help="inner learning rate (Meta-SGD: its initial value)")
    p.add_argument("--channels", type=int, default=64, help="filters per conv layer")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="of weights and data; float64 tells float32 rounding from real gradient differences")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--markdown", help="rewrite the peers section (between the markers) of this Markdown file")
    p.add_argument("--case", nargs=3, metavar=("LIB", "ROW", "META_BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--grad-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:  # internal: one case in this process, JSON on the last line of stdout
        lib, row, mb = a.case
        cfg = Config(row=row, meta_batch=int(mb), steps=a.steps, lr=a.lr, channels=a.channels,
                     dtype=a.dtype)
        res = run_case(lib, cfg, repeats=a.repeats, warmup=a.warmup, threads=a.threads, grad_out=a.grad_out)
        res.pop("grads", None)
        print(json.dumps(res))
        return 0

    libs = expand_libraries(a.libraries)
    info = {**machine_info(a.threads), "repeats": a.repeats, "warmup": max(a.warmup, 1)}
    print(f"{info['cpu']}, torch {info['torch']}, {a.threads} threads per case, "
          f"load average {'/'.join(f'{x:.2f}' for x in info['load_start'])}")
    path_problems = {lib: ours_path_problem(lib.split(":", 1)[1]) for lib in libs if lib.startswith("ours:")}
    results: list[dict] = []
    order = sorted(libs, key=lambda lib: lib != GRAD_REFERENCE)  # the gradient reference first
    width = max(len(column_title(lib)) for lib in libs)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for mb in a.meta_batch:
            for row in a.rows:
                cfg = Config(row=row, meta_batch=mb, steps=a.steps, lr=a.lr, channels=a.channels,
                             dtype=a.dtype)
                print(f"\n{ROWS[row].label}, meta-batch {mb}", flush=True)
                case: dict[str, dict] = {}
                ref = None
                if GRAD_REFERENCE not in libs:  # not timed: one untimed step for its meta-gradient
                    ref_path = os.path.join(tmp, f"{row}-{mb}-ref.pt")
                    one = argparse.Namespace(repeats=0, warmup=1, threads=a.threads)
                    if _child(GRAD_REFERENCE, cfg, one, ref_path)["status"] == "ok":
                        ref = torch.load(ref_path)
                for lib in order:  # the reference first, so each line can be printed when it is measured
                    gpath = os.path.join(tmp, f"{row}-{mb}-{lib.replace(':', '_')}.pt")
                    blank = {"library": lib, "row": row, "meta_batch": mb, "version": ""}
                    if not installed(lib):
                        r = {**blank, "status": "not installed", "note": ""}
                    elif lib.startswith("ours:") and (why := path_problems[lib]):
                        r = {**blank, "status": "n/a", "note": why}
                    else:
                        r = _child(lib, cfg, a, gpath)
                    if r["status"] == "ok":
                        grads = torch.load(gpath)
                        if lib == GRAD_REFERENCE:
                            ref = grads
                        if ref is not None:
                            r["grad_diff"], r["grad_rel"] = grad_diff(grads, ref)
                    case[lib] = r
                    print(f"  {column_title(lib):<{width}}  {_fmt_line(r)}", flush=True)
                results += [case[lib] for lib in libs]
    info["load_end"] = os.getloadavg()

    print()
    for mb in a.meta_batch:
        print(f"s / meta-step, meta-batch {mb}")
        print(f"{'row':<28}" + "".join(f"{column_title(lib):>15}" for lib in libs))
        for row in a.rows:
            cells = {r["library"]: _fmt_cell(r) for r in results if r["row"] == row and r["meta_batch"] == mb}
            print(f"{ROWS[row].label:<28}" + "".join(f"{cells.get(lib, '–'):>15}" for lib in libs))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    if a.markdown:
        command = "python -m innerloop.bench.peers " + shlex.join(argv if argv is not None else sys.argv[1:])
        write_section(a.markdown, markdown(results, info, libs, command))
        print(f"\nwrote the peers section of {a.markdown}")
    return 0


def tiny_config(**kw) -> Config:
    """A configuration small enough for tests (2 tasks, 1 inner step, 4 channels)."""
    return replace(Config(meta_batch=2, steps=1, channels=4), **kw)


if __name__ == "__main__":
    sys.exit(main())
