"""The run directory of one training run: who may write it, what it holds, where a resume starts.

A :class:`Run` claims its directory with a lock (one writer; a second process gets a
:class:`~innerloop.experiments.lock.RunLocked` naming the holder), decides between a fresh start,
``resume`` and ``overwrite``, holds the SIGINT/SIGTERM handlers and the current phase while it is
open (:mod:`~innerloop.experiments.stop`), and is the only writer of the run's files:

* ``config.json`` — the resolved config (the run keeps its own copy in memory);
* ``metrics.jsonl`` — one JSON object per line: a ``start`` event, training rows (``iteration``,
  ``loss``, ``metric``), validation rows (``val``, ...) and a ``test`` event, each with ``seconds``
  (the run's clock: seconds since it started, summed over its sessions); ``metrics.csv`` and
  ``tensorboard/`` when ``train.log`` names them (:mod:`~innerloop.experiments.sinks`);
* ``last.pt`` — everything needed to resume exactly, written every ``train.checkpoint_every``
  iterations, at the end and when stopped by a signal; ``best.pt`` — the best validation weights;
* ``test.json`` — the final test, from ``best.pt``.

A resume continues from ``last.pt`` and first cuts ``metrics.jsonl`` back to it (rows of iterations
after the checkpoint, a test event, a half-written last line), and the other sinks with it, so that
an interrupted and resumed run leaves the same files as an uninterrupted one. Temporary files of
writers that were killed mid-write are removed when the directory is claimed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments import faults, sinks
from innerloop.experiments.config import Config, ConfigError, to_dict, validate
from innerloop.experiments.lock import LOCK_NAME, RunLock
from innerloop.experiments.stop import Stop, StopSignals

#: keys of the config that may change when a run is resumed
#: keys of the config that may change when a run is resumed (more iterations; where it runs and what it logs)
RESUMABLE_CHANGES = {"train.iterations", "train.device", "train.log"}
#: the files a training run writes (``--overwrite`` removes these and nothing else)
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "test.json", "test_tasks.csv", sinks.CSV_NAME)
RUN_DIRS = (sinks.TB_DIR,)
EVAL_GLOB = "eval-*.json"  # results of `innerloop eval`, also part of a run


def read_run_config(out: Path) -> dict:
    """The stored ``config.json`` of run directory ``out`` as a dict (not validated), or a ConfigError."""
    f = out / "config.json"
    if not f.is_file():
        raise ConfigError(f"{out} is not a run directory (no config.json)")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{f} is not UTF-8 text; the run's config is damaged") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f} is not valid JSON ({e}); the run's config is damaged") from None
    except OSError as e:
        raise ConfigError(f"cannot read {f}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{f} holds a JSON {type(data).__name__}, not a config; the run's config is damaged")
    return data


def check_output_dir(out: Path) -> None:
    """Refuse, before any work, an output directory that cannot be created: it or a parent is a file."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                where = "it is a file" if p == out else f"{p} is a file"
                raise ConfigError(f"cannot use {out} as an output directory: {where}")
            return


def config_changes(stored: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Every dotted key whose value differs, with its stored and new values."""
    out = []
    for k in sorted(set(stored) | set(new), key=str):
        key = f"{prefix}{k}"
        a, b = stored.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, key + ".")
        elif a != b:
            out.append((key, a, b))
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _metrics_iterations(path: Path) -> int:
    """The highest iteration any complete row of ``metrics.jsonl`` names (0 if none)."""
    if not path.is_file():
        return 0
    top = 0
    for row in _complete_rows(path.read_bytes()):
        it = row[1].get("iteration")
        if isinstance(it, int) and not isinstance(it, bool):
            top = max(top, it)
    return top


def _complete_rows(data: bytes) -> list[tuple[bytes, dict]]:
    """(line, parsed row) for each complete line that is a JSON object; a half-written line is skipped."""
    rows = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append((line, row))
    return rows


class Run:
    """One run directory, claimed for writing (``main``) or only read (the other ranks of a launch).

    Use as a context manager: entering claims and prepares the directory, leaving releases it.
    After entering, :attr:`resume_state` is the ``last.pt`` to continue from (None: start at 0)."""

    def __init__(self, cfg: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 main: bool = True):
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or start it again")
        self.cfg, self.out, self.resume, self.overwrite, self.main = cfg, Path(out), resume, overwrite, main
        self.last, self.best = self.out / "last.pt", self.out / "best.pt"
        self.metrics, self.test = self.out / "metrics.jsonl", self.out / "test.json"
        self.resume_state: dict[str, Any] | None = None
        self.saved_iteration: int | None = None  # the iteration last.pt holds
        self.phase = "start-up"  # then "training", "the final test": named when a signal stops the run
        self.stops = StopSignals()
        self._lock = RunLock(self.out)
        #: the run's clock (seconds since it started, over all its sessions), set by the training loop;
        #: every row of metrics.jsonl gets its value as ``seconds``
        self.clock: Callable[[], float] | None = None
        self.sinks: list = []
        sinks.check_available(cfg.train.log)  # a missing optional package is refused before any work

    # ---- claiming the directory ----------------------------------------------------------------
    def __enter__(self) -> Run:
        if self.resume and not (self.out / "config.json").is_file():  # checked again under the lock
            raise ConfigError(f"nothing to resume in {self.out} (no config.json); start the run without --resume")
        self.stops.__enter__()  # from here a signal ends the run with one line, whatever the phase
        try:
            if self.main:
                self._claim()
            faults.point("startup")
            if self.resume:
                self._check_resume()
            elif self.main:
                self._check_fresh()
            if self.main:
                try:
                    self._prepare()
                except OSError as e:  # a read-only directory whose lock file is still writable, a full disk
                    raise ConfigError(f"cannot write in run directory {self.out}: {e.strerror}") from None
        except BaseException:
            self._lock.release()
            self.stops.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for s in self.sinks:
            s.close()
        self._lock.release()
        self.stops.__exit__()

    def _claim(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"cannot use {self.out} as a run directory: it is a file") from None
        except NotADirectoryError:
            raise ConfigError(f"cannot create run directory {self.out}: a parent of it is a file") from None
        except OSError as e:
            raise ConfigError(f"cannot create run directory {self.out}: {e.strerror}") from None
        self._lock.acquire()
        ckpt.clean_stale_temps(self.out)

    def _others(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir() if p.name != LOCK_NAME) if self.out.is_dir() else []

    def _check_fresh(self) -> None:
        present = self._others()
        if not present:
            return
        if not self.overwrite:
            what = "holds a run" if "config.json" in present else f"is not empty ({', '.join(present[:3])}" + (
                ", ...)" if len(present) > 3 else ")")
            raise ConfigError(f"{self.out} {what}; pass --resume to continue it, --overwrite to start it again, "
                              "or use another --out")
        ours = set(RUN_FILES) | {p.name for p in self.out.glob(EVAL_GLOB)}
        foreign = [n for n in present if n not in ours and not (n in RUN_DIRS and (self.out / n).is_dir())]
        if foreign:
            raise ConfigError(f"{self.out} holds files no run writes ({', '.join(foreign[:3])}); --overwrite only "
                              "replaces a run, so remove them or use another --out")
        for n in present:
            p = self.out / n
            shutil.rmtree(p) if n in RUN_DIRS and p.is_dir() else p.unlink()

    def _check_resume(self) -> None:
        if not (self.out / "config.json").is_file():
            raise ConfigError(f"nothing to resume in {self.out} (no config.json); start the run without --resume")
        stored = read_run_config(self.out)
        try:  # an option added since the run started reads as its default, which keeps the old behaviour
            stored = to_dict(validate(stored))
        except ConfigError:
            pass  # compare as stored: the differences are then named below
        changed = [c for c in config_changes(stored, to_dict(self.cfg)) if c[0] not in RESUMABLE_CHANGES]
        if changed:
            diff = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changed)
            raise ConfigError(f"cannot resume {self.out}: the config differs from the stored one ({diff}); "
                              f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")
        done = 0
        if self.last.exists():
            self.resume_state = ckpt.load_checkpoint(self.last, "last")
            self.saved_iteration = done = self.resume_state["iteration"]
        # work after the checkpoint (validation rows, best.pt) counts as done: a shorter run would
        # keep a best.pt from beyond its own end
        if self.best.exists():
            done = max(done, ckpt.load_checkpoint(self.best, "best")["iteration"])
        done = max(done, _metrics_iterations(self.metrics))
        n = self.cfg.train.iterations
        if n < done:
            saved = self.saved_iteration
            at = f"; its last checkpoint is at {saved}" if saved not in (None, done) else ""
            raise ConfigError(f"cannot resume {self.out}: it has run to iteration {done}{at}, and train.iterations="
                              f"{n} is fewer (a run cannot be shortened; start a new one in another --out)")

    def _prepare(self) -> None:
        ckpt.save_json(to_dict(self.cfg), self.out / "config.json")
        self.test.unlink(missing_ok=True)  # until the final test of this session, the run is not finished
        kept: list[dict] | None = None
        resumed_at: int | None = None
        if self.resume_state is None:
            self.metrics.unlink(missing_ok=True)
            if self.resume:  # resumed before the first checkpoint: starts again from iteration 0
                resumed_at, kept = 0, []
        else:
            resumed_at = self.resume_state["iteration"]
            kept = self._trim_metrics(resumed_at)
        self.sinks = sinks.open_sinks(self.cfg.train.log, self.out, kept, resumed_at)

    def _trim_metrics(self, upto: int) -> list[dict]:
        """Keep the start event and the rows of iterations ≤ ``upto``, byte for byte; return the kept rows."""
        if not self.metrics.is_file():
            return []
        keep = [(line, row) for line, row in _complete_rows(self.metrics.read_bytes())
                if row.get("event") == "start" or ("event" not in row and isinstance(row.get("iteration"), int)
                                                   and row["iteration"] <= upto)]
        ckpt._atomic(self.metrics, lambda f: f.write(b"".join(line for line, _ in keep)))
        return [row for _, row in keep]

    # ---- writing -------------------------------------------------------------------------------
    def log(self, **row: Any) -> None:
        """Append one row to ``metrics.jsonl`` (non-finite numbers as null, named in ``nonfinite``) and
        to the other sinks; a row without ``seconds`` gets the run's clock."""
        if not self.main:
            return
        row.setdefault("seconds", self.clock() if self.clock is not None else 0.0)
        line = ckpt.json_text(row) + "\n"
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(line)
        for s in self.sinks:
            s.write(row)
        faults.point("log")

    def save_last(self, state: dict[str, Any]) -> None:
        if self.main:
            ckpt.save_torch({"format": ckpt.FORMAT, **state}, self.last)
        self.saved_iteration = state["iteration"]

    def save_best(self, iteration: int, algorithm: dict, val: dict[str, Any]) -> None:
        if self.main:
            ckpt.save_torch({"format": ckpt.FORMAT, "iteration": iteration, "algorithm": algorithm, "val": val},
                            self.best)

    def write_test(self, res: dict[str, Any], per_task: dict[str, list[float]] | None = None) -> None:
        """``test.json`` and, with ``per_task`` (column → one value per test task), ``test_tasks.csv``."""
        if self.main:
            if per_task:
                cols = list(per_task)
                rows = [[i, *(per_task[c][i] for c in cols)] for i in range(len(per_task[cols[0]]))]
                ckpt.save_csv(["task", *cols], rows, self.out / "test_tasks.csv")
            ckpt.save_json(res, self.test)
            self.log(event="test", **{k: res[k] for k in ("mean", "ci95", "tasks")})

    # ---- messages ------------------------------------------------------------------------------
    def stopped(self, stop: Stop) -> str:
        return f"interrupted by {stop.name} during {self.phase}; {self.checkpoint_note()}"

    def checkpoint_note(self) -> str:
        """Where a resume would start, for messages: the checkpoint on disk, or that there is none."""
        if self.saved_iteration is not None and self.last.exists():
            return f"{self.last} holds iteration {self.saved_iteration}"
        if (self.out / "config.json").exists():
            return f"no checkpoint was written yet (--resume starts {self.out} again from iteration 0)"
        return f"nothing was written to {self.out}"
