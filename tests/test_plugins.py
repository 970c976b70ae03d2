"""A user's rule and model from the CLI: --import, the config's plugins key, and an entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TINY = ["train.iterations=2", "train.meta_batch=2", "train.val_every=2", "train.val_tasks=2", "eval.tasks=2",
        "task.query=5"]


def run(args, tmp_path, extra_path=()):
    if not (tmp_path / "base.toml").exists():
        (tmp_path / "base.toml").write_text('name = "plugin-test"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *map(str, extra_path)])}
    return subprocess.run([sys.executable, "-m", "innerloop", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True)


def test_import_flag_makes_a_users_rule_and_model_valid_names(tmp_path):
    r = run(["--import", "plugin_pkg.my_rules", "train", "base.toml", "rule.name=half_sgd", "model.name=tiny",
             "model.width=3", *TINY, "--out", "run", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["rule"]["name"] == "half_sgd" and cfg["model"] == {"name": "tiny", "width": 3}
    r = run(["train", "base.toml", "rule.name=half_sgd", *TINY, "--out", "other", "--no-progress"], tmp_path)
    assert r.returncode == 2 and "half_sgd" in r.stderr and "Traceback" not in r.stderr
    r = run(["--import", "no_such_plugin", "train", "base.toml", *TINY, "--out", "x"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no_such_plugin" in r.stderr


def test_plugins_key_in_a_config_travels_with_the_run(tmp_path):
    (tmp_path / "cfg.toml").write_text('plugins = ["plugin_pkg.my_rules"]\n[rule]\nname = "half_sgd"\nlr = 0.1\n')
    r = run(["train", "cfg.toml", *TINY, "--out", "run", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plugins"] == ["plugin_pkg.my_rules"]
    r = run(["eval", "run", "--tasks", "2"], tmp_path)  # the stored config imports the plugin again
    assert r.returncode == 0, r.stderr


def test_an_installed_entry_point_is_loaded_by_every_command(tmp_path):
    site = tmp_path / "site"
    dist = site / "my_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[innerloop.plugins]\nmine = plugin_pkg.my_rules\n")
    r = run(["train", "base.toml", "rule.name=half_sgd", *TINY, "--out", "run", "--no-progress"], tmp_path, [site])
    assert r.returncode == 0, r.stderr
