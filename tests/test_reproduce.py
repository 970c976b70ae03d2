"""``innerloop reproduce``: rows run in their own process, finished rows are skipped."""

from __future__ import annotations

import json

import pytest

from innerloop.experiments.cli import main
from innerloop.experiments.config import ConfigError
from innerloop.experiments.reproduce import read_table, reproduce

TABLE = """
title = "tiny"
base = "base.toml"
[scale]
cpu = ["train.iterations=2"]
paper = ["train.iterations=3"]
[[row]]
name = "sgd"
label = "SGD"
overrides = ["rule.name=sgd"]
paper = 1.5
[[row]]
name = "msgd"
overrides = ["rule.name=meta_sgd"]
"""

BASE = """
[model]
hidden = [4]
[task]
query = 5
[train]
meta_batch = 2
val_tasks = 3
[eval]
tasks = 4
"""


@pytest.fixture
def table(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "tiny.toml").write_text(TABLE)
    return tmp_path / "tiny.toml"


def test_reproduce_runs_rows_then_skips_them(table, tmp_path, capsys):
    assert main(["reproduce", str(table), "--out", str(tmp_path / "res")]) == 0
    report = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["sgd", "msgd"]
    assert all(r["tasks"] == 4 and r["iteration"] == 2 and r["train_seconds"] > 0 for r in report["rows"])
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| SGD |" in md and "| 1.5 |" in md and "train.iterations=2" in md
    again = reproduce(table, out_root=tmp_path / "res")
    assert all(r.get("skipped") for r in again["rows"])


def test_rows_left_out_are_reported_as_not_run(table, tmp_path):
    report = reproduce(table, out_root=tmp_path / "res", only=["sgd"])
    assert [r["name"] for r in report["rows"]] == ["sgd", "msgd"] and report["rows"][1]["not_run"]
    assert "| msgd | not run yet |" in (tmp_path / "res" / "tiny.md").read_text()


def test_bad_tables_are_user_errors(table, tmp_path):
    with pytest.raises(ConfigError, match="no scale"):
        reproduce(table, scale="huge", out_root=tmp_path / "res")
    (tmp_path / "bad.toml").write_text(TABLE.replace('name = "msgd"', 'name = "msgd"\ncolour = 1'))
    with pytest.raises(ConfigError, match="colour"):
        read_table(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(TABLE.replace("rule.name=sgd", "rule.nme=sgd"))
    with pytest.raises(ConfigError, match="rule.nme"):
        reproduce(tmp_path / "bad2.toml", out_root=tmp_path / "res")
