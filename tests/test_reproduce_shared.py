"""Rows shared between tables (``same_as``): trained once, in the owner's directory, reported by both."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from innerloop.experiments.config import ConfigError, to_dict
from innerloop.experiments.lock import RunLock
from innerloop.experiments.plan import plan
from innerloop.experiments.reproduce import reproduce
from innerloop.experiments.tables import read_table, row_config, row_seeds, runs_at, shared_owner
from test_reproduce import BASE

OWNER = """
title = "owner"
base = "base.toml"
seeds = 2
[scale]
cpu = ["train.iterations=2"]
[[row]]
name = "sgd"
overrides = ["rule.name=sgd"]
"""

SHARER = """
title = "sharer"
base = "base.toml"
seeds = 2
[scale]
cpu = ["train.iterations=2"]
[[row]]
name = "plain"
label = "plain SGD"
overrides = ["rule.name=sgd"]
same_as = "owner:sgd"
[[row]]
name = "msgd"
overrides = ["rule.name=meta_sgd"]
"""


@pytest.fixture
def tables(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "owner.toml").write_text(OWNER)
    (tmp_path / "sharer.toml").write_text(SHARER)
    return tmp_path


@pytest.mark.parametrize("seeds", [1, 2])
def test_a_shared_row_trains_in_the_owners_directory_once_and_both_tables_report_it(tables, seeds):
    for t in ("owner", "sharer"):
        (tables / f"{t}.toml").write_text((tables / f"{t}.toml").read_text().replace("seeds = 2", f"seeds = {seeds}"))
    res = tables / "res"
    shared = reproduce(tables / "sharer.toml", out_root=res)
    runs = [res / "owner" / "sgd"] if seeds == 1 else [res / "owner" / "sgd" / f"seed{k}" for k in range(seeds)]
    assert all((d / "test.json").is_file() for d in runs) and not (res / "sharer" / "plain").exists()
    assert json.loads((runs[0] / "config.json").read_text())["name"] == "sgd"
    plain = shared["rows"][0]
    assert plain["name"] == "plain" and plain["shared"] == "owner:sgd" and plain["n_seeds"] == seeds
    assert "plain SGD = `owner:sgd`" in (res / "sharer.md").read_text()

    owner = reproduce(tables / "owner.toml", out_root=res)  # nothing left to train
    assert all(r["skipped"] for r in owner["rows"][0]["runs"])
    assert owner["rows"][0]["mean"] == plain["mean"] and owner["rows"][0]["ci95"] == plain["ci95"]
    assert reproduce(tables / "sharer.toml", out_root=res, collect=True)["rows"][0]["mean"] == plain["mean"]
    assert [(r.row, r.state) for r in plan(tables / "sharer.toml", out_root=res)][:seeds] == [
        ("plain (= owner:sgd)", "done")] * seeds


@pytest.mark.parametrize("change, message", [
    ('overrides = ["rule.name=sgd", "rule.lr=0.3"]\nsame_as = "owner:sgd"', "differ at scale 'cpu' in rule.lr"),
    ('overrides = ["rule.name=sgd"]\nseeds = 1\nsame_as = "owner:sgd"', "1 seeds here, 2 there"),
    ('overrides = ["rule.name=sgd"]\nsame_as = "nowhere:sgd"', "no table file"),
    ('overrides = ["rule.name=sgd"]\nsame_as = "owner:adam"', "has no row 'adam'"),
])
def test_a_shared_row_that_is_not_the_same_run_is_refused_before_training(tables, change, message):
    (tables / "sharer.toml").write_text(SHARER.replace('overrides = ["rule.name=sgd"]\nsame_as = "owner:sgd"', change))
    with pytest.raises(ConfigError, match=message):
        reproduce(tables / "sharer.toml", out_root=tables / "res")
    assert not (tables / "res").exists()


def test_shared_rows_are_checked_when_the_table_is_read(tables):
    (tables / "self.toml").write_text(SHARER.replace("owner:sgd", "self:msgd"))
    with pytest.raises(ConfigError, match="names this table"):
        read_table(tables / "self.toml")
    (tables / "twice.toml").write_text(SHARER.replace('name = "msgd"', 'name = "msgd"\nsame_as = "owner:sgd"'))
    with pytest.raises(ConfigError, match="are both same_as 'owner:sgd'"):
        read_table(tables / "twice.toml")
    (tables / "chain.toml").write_text(SHARER.replace("owner:sgd", "sharer:plain").replace('"sharer"', '"chain"'))
    table = read_table(tables / "chain.toml")
    with pytest.raises(ConfigError, match="itself shared"):
        shared_owner(tables / "chain.toml", table, table.row[0], "cpu")
    (tables / "colon.toml").write_text(SHARER.replace("owner:sgd", "owner-sgd"))
    with pytest.raises(ConfigError, match="same_as"):
        read_table(tables / "colon.toml")


def test_our_tables_train_each_config_once():
    """Two rows of the shipped tables that run the same config at cpu scale (all but the name) must be
    linked by ``same_as``, so that no run is trained twice."""
    tables = Path(__file__).resolve().parents[1] / "configs" / "tables"
    owners: dict[str, set[str]] = {}
    for path in sorted(tables.glob("*.toml")):
        table = read_table(path)
        for row in table.row:
            if row.kind != "train" or not runs_at(row, "cpu") or "cpu" not in table.scale:
                continue
            cfg = to_dict(row_config(path, table, row, "cpu"))
            cfg.pop("name")
            cfg["seeds"] = row_seeds(table, row)  # rows with other seed counts are other runs
            key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
            owner_path, _, owner = shared_owner(path, table, row, "cpu")
            owners.setdefault(key, set()).add(f"{owner_path.stem}:{owner.name}")
    assert not {k: v for k, v in owners.items() if len(v) > 1}


def test_a_shared_run_in_training_elsewhere_is_not_trained_twice(tables):
    for t in ("owner", "sharer"):
        (tables / f"{t}.toml").write_text((tables / f"{t}.toml").read_text().replace("seeds = 2", "seeds = 1"))
    run = tables / "res" / "owner" / "sgd"
    run.mkdir(parents=True)
    lock = RunLock(run)
    lock.acquire()  # as another reproduce training the owner's row would hold it
    try:
        row = reproduce(tables / "sharer.toml", out_root=tables / "res", only=["plain"])["rows"][0]
    finally:
        lock.release()
    assert row["failed"] and "in use by another innerloop process" in Path(row["log"]).read_text()
    assert not (run / "config.json").exists()
