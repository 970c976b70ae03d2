"""Table files: what a reproduced table says (rows, scales, claims, figures), read and checked,
and the config each row runs. Running the rows is :mod:`innerloop.experiments.reproduce`'s job.

A table file (TOML) names a base config, per-scale overrides and rows::

    title = "ALFA Table 8: sine regression, test MSE"
    base = "../sine_maml.toml"              # relative to the table file
    [scale]
    cpu = ["train.iterations=20000"]        # what the cpu scale changes (say why in a comment)
    paper = []
    [[row]]
    name = "maml-2x40-k5"                   # run directory name
    label = "MAML, 1-40-40-1, K=5"
    overrides = ["task.k_shot=5"]
    paper = 1.24                            # the paper's figure (optional)
    scale = {cpu = ["model.widths=[16, 32, 64, 128]"]}   # this row's own per-scale overrides (optional)
    x = 5                                   # for `innerloop plot table`: the row's x value (optional)
    series = "MAML"                         # for `innerloop plot table`: its line / bar group (optional)
    seeds = 1                               # this row's own number of training seeds (optional)
    scales = ["paper"]                      # the only scales this row runs at (optional; default all)
    same_as = "alfa_table1:maml-conv4-mini-5shot"   # this row is another table's row: trained once, there

``same_as = "TABLE:ROW"`` says a row runs exactly the config of a row of another table in the same
folder (checked: every key but ``name``, and the seeds): its runs are trained once, under
``results/TABLE/ROW/``, and both tables report them.

``seeds = N`` (table-wide, or per row) trains each row N times with ``train.seed`` = 0..N−1, in
``results/<table>/<row>/seed<k>/``; with one seed the run directory is ``results/<table>/<row>/``.
The row's figure is then the mean over seeds with the between-seed spread (``verdict.aggregate``).

A row with ``kind = "upper_bound"`` is not meta-trained: ``innerloop upper-bound`` trains the row's
model on each test task alone (options in ``upper_bound = {train_points = 2000, steps = 1000}``;
``init`` names another row whose learned θ0 to start from; these rows run after the others).
The table's optional ``x_label`` names the x axis of its plot. ``[[claim]]`` entries (``text``,
``better``, ``than``: two row names; ``why_not``: one sentence shown under a "no" verdict) are the
paper's claims that ``innerloop report`` checks, and ``[[figure]]`` entries (``file``, ``caption``,
``command = "innerloop plot ... --out FILE"``) the figures it shows
(``innerloop report --draw`` runs their commands first).

``innerloop reproduce NAME`` also takes a bare table name: ``configs/tables/NAME.toml`` (looked up
from the working directory, then from the source tree).
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, PositiveInt, ValidationError

from innerloop.experiments.config import Config, ConfigError, config_diff, load, to_dict
from innerloop.experiments.upper_bound import UpperBoundOptions


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    label: str = ""
    base: str | None = None  # another base config for this row (relative to the table file)
    overrides: list[str] = []
    scale: dict[str, list[str]] = {}  # per-scale overrides of this row, applied after its overrides
    paper: float | None = None
    kind: Literal["train", "upper_bound"] = "train"  # upper_bound: `innerloop upper-bound`, no meta-training
    upper_bound: UpperBoundOptions | None = None  # options of an upper_bound row (init: another row's name)
    x: FiniteFloat | None = None  # for plots: a numeric attribute of the row (conv layers, classes, ...)
    series: str | None = None  # for plots: the line / bar group of the row
    seeds: PositiveInt | None = None  # training seeds of this row (default: the table's)
    scales: list[str] | None = None  # the scales this row runs at (default: all); e.g. a dataset with no substitute
    # "TABLE:ROW": this row is that row of another table in the same folder (the same config but for its
    # name): its runs are trained once, in that row's directory, and both tables report them
    same_as: str | None = Field(default=None, pattern=r"^[^:]+:[^:]+$")


class Claim(BaseModel):
    """A paper's claim that one row beats another, checked by ``innerloop report``."""

    model_config = ConfigDict(extra="forbid")
    text: str  # e.g. "ALFA+MAML beats MAML (K=5)"
    better: str  # the row claimed to be better
    than: str  # the row it is claimed to beat
    # One sentence on why the claim does not hold here, shown under a "no" verdict: our
    # implementation, the CPU scale or a dataset substitute, or the paper's own numbers.
    why_not: str = ""


class Figure(BaseModel):
    """A figure drawn from this table's results by an ``innerloop plot`` command, shown by ``innerloop report``."""

    model_config = ConfigDict(extra="forbid")
    file: str  # the PNG, relative to the working directory the commands run in (the repository root)
    command: str  # the `innerloop plot ...` command that draws it (run by `innerloop report --draw`)
    caption: str = ""


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    base: str
    scale: dict[str, list[str]] = Field(default_factory=lambda: {"paper": []})
    row: list[Row]
    notes: str = ""
    x_label: str = ""  # for plots: what the rows' x is
    claim: list[Claim] = []  # claims of the paper, checked by `innerloop report`
    seeds: PositiveInt = 1  # training seeds per row (train.seed = 0..seeds-1)
    figure: list[Figure] = []  # figures drawn from the results, shown by `innerloop report`


def read_table(path: str | Path) -> Table:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table file not found: {p}")
    try:
        table = Table.model_validate(tomllib.loads(p.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise ConfigError(f"bad table file {p}: {e}".replace("\n", " ")) from None
    for r in table.row:
        unknown = sorted((set(r.scale) | set(r.scales or [])) - set(table.scale))
        if unknown:
            raise ConfigError(f"bad table file {p}: row {r.name!r} has overrides for scale(s) {', '.join(unknown)} "
                              f"that the table does not define (it has: {', '.join(table.scale)})")
    _check_rows(p, table)
    names = {r.name for r in table.row}
    for c in table.claim:
        missing = [n for n in (c.better, c.than) if n not in names]
        if missing:
            raise ConfigError(f"bad table file {p}: claim {c.text!r} names unknown row(s) {', '.join(missing)} "
                              f"(rows: {', '.join(sorted(names))})")
    for f in table.figure:
        words = shlex.split(f.command)  # as `innerloop report --draw` will split it
        if words[:2] != ["innerloop", "plot"] or "--out" not in words or f.file not in words:
            raise ConfigError(f"bad table file {p}: figure {f.file!r}: its command must be `innerloop plot ... "
                              f"--out {f.file}` (got {f.command!r})")
    return table


def _check_rows(p: Path, table: Table) -> None:
    """Row kinds, upper-bound options and plot coordinates."""
    kinds = {r.name: r.kind for r in table.row}
    seen: dict[tuple[str | None, float], str] = {}
    shared: dict[str, str] = {}
    for r in table.row:
        if r.upper_bound is not None and r.kind != "upper_bound":
            raise ConfigError(f"bad table file {p}: row {r.name!r} has upper_bound options but kind = {r.kind!r} "
                              f"(set kind = \"upper_bound\")")
        init = r.upper_bound.init if r.upper_bound is not None else None
        if init is not None and kinds.get(init) != "train":
            raise ConfigError(f"bad table file {p}: row {r.name!r}: upper_bound.init = {init!r} is not a trained "
                              f"row of this table (rows: {', '.join(n for n, k in kinds.items() if k == 'train')})")
        if r.same_as is not None and r.kind != "train":
            raise ConfigError(f"bad table file {p}: row {r.name!r}: same_as is for trained rows (kind = {r.kind!r})")
        if r.same_as is not None and r.same_as.split(":")[0] == p.stem:
            raise ConfigError(f"bad table file {p}: row {r.name!r}: same_as = {r.same_as!r} names this table; "
                              "two rows of one table with one config are one row")
        if r.same_as is not None:
            other = shared.setdefault(r.same_as, r.name)
            if other != r.name:
                raise ConfigError(f"bad table file {p}: rows {other!r} and {r.name!r} are both same_as {r.same_as!r}")
        if r.x is not None:
            other = seen.setdefault((r.series, r.x), r.name)
            if other != r.name:
                raise ConfigError(f"bad table file {p}: rows {other!r} and {r.name!r} have the same x = {r.x:g} in "
                                  f"series {r.series!r}")


PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # shipped in the wheel (a link in the source tree)


def resolve_table(name: str | Path) -> Path:
    """A table file path, or a bare table name looked up as ``configs/tables/NAME.toml`` in the working
    directory, then among the tables shipped with the package."""
    p = Path(name)
    if p.is_file() or p.suffix or len(p.parts) > 1:
        return p
    dirs = list(dict.fromkeys([Path.cwd() / "configs" / "tables", PACKAGE_CONFIGS / "tables"]))
    for d in dirs:
        if (d / f"{p.name}.toml").is_file():
            return d / f"{p.name}.toml"
    known = sorted({t.stem for d in dirs if d.is_dir() for t in d.glob("*.toml")})
    raise ConfigError(f"no table named {str(name)!r}: looked for {', '.join(str(d / f'{p.name}.toml') for d in dirs)}"
                      + (f" (tables: {', '.join(known)})" if known else ""))


def row_overrides(table: Table, row: Row, scale: str) -> list[str]:
    return [*table.scale[scale], *row.overrides, *row.scale.get(scale, []), f"name={row.name}"]


def row_base(table_path: Path, table: Table, row: Row) -> Path:
    """The base config file of a row (its own ``base`` or the table's, relative to the table file)."""
    return (Path(table_path).parent / (row.base or table.base)).resolve()


def row_config(table_path: Path, table: Table, row: Row, scale: str) -> Config:
    """The validated config a row runs at ``scale`` (nothing is built or trained)."""
    return load(row_base(table_path, table, row), row_overrides(table, row, scale))


def shared_owner(table_path: Path, table: Table, row: Row, scale: str) -> tuple[Path, Table, Row]:
    """The table file, table and row whose runs ``row`` reports: its own, or those its ``same_as`` names,
    checked to run the same config at ``scale`` (all but the name) with the same seeds."""
    if row.same_as is None:
        return table_path, table, row
    stem, name = row.same_as.split(":")
    where = f"{table_path}: row {row.name!r}: same_as = {row.same_as!r}"
    path = Path(table_path).parent / f"{stem}.toml"
    if not path.is_file():
        raise ConfigError(f"{where}: no table file {path}")
    other = read_table(path)
    owner = next((r for r in other.row if r.name == name), None)
    if owner is None:
        raise ConfigError(f"{where}: {path} has no row {name!r} (rows: {', '.join(r.name for r in other.row)})")
    if owner.same_as is not None:
        raise ConfigError(f"{where}: that row is itself shared (same_as = {owner.same_as!r}); name {owner.same_as!r}")
    if scale not in other.scale or not runs_at(owner, scale):
        raise ConfigError(f"{where}: that row does not run at scale {scale!r}")
    if row_seeds(table, row) != row_seeds(other, owner):
        raise ConfigError(f"{where}: {row_seeds(table, row)} seeds here, {row_seeds(other, owner)} there")
    mine, theirs = (to_dict(row_config(*x, scale)) for x in ((table_path, table, row), (path, other, owner)))
    differ = [k for k in config_diff(mine, theirs) if k != "name"]
    if differ:
        raise ConfigError(f"{where}: the two rows' configs differ at scale {scale!r} in {', '.join(differ[:6])}")
    return path, other, owner


def runs_at(row: Row, scale: str) -> bool:
    return row.scales is None or scale in row.scales


def row_seeds(table: Table, row: Row) -> int:
    return row.seeds or table.seeds
