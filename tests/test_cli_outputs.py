"""The command line's output controls (issue 17): ``innerloop config`` prints the resolved config,
``--quiet`` prints nothing but errors, ``--device`` picks (or refuses) the device."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from innerloop.experiments import cli
from innerloop.experiments.config import load, to_dict, validate
from run_helpers import one_line, write_config


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    """``innerloop ARGS`` in this process: (status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_prints_a_toml_that_reads_back_to_the_same_config(path, capsys):
    assert cli.main(["config", str(path), "train.meta_lr=0.005"]) == 0
    text = capsys.readouterr().out
    cfg = load(path, ["train.meta_lr=0.005"])
    assert validate(tomllib.loads(text)) == cfg  # every key, defaults included; nulls named in a comment
    assert tomllib.loads(text)["train"]["meta_lr"] == 0.005
    nulls = [f"{s}.{k}" for s, sec in to_dict(cfg).items() if isinstance(sec, dict) for k, v in sec.items()
             if v is None]
    unset = [line for line in text.splitlines() if line.startswith("# unset")]
    assert [n.strip() for line in unset for n in line.split(":", 1)[1].split(",")] == nulls


def test_config_json_is_what_train_stores(capsys, tmp_path):
    cfg_file = write_config(tmp_path / "tiny.toml")
    assert cli.main(["config", str(cfg_file), "--json", "rule.name=meta_sgd"]) == 0
    assert json.loads(capsys.readouterr().out) == to_dict(load(cfg_file, ["rule.name=meta_sgd"]))
    assert cli.main(["config"]) == 0  # no file: the defaults
    assert tomllib.loads(capsys.readouterr().out)["algorithm"]["name"] == "maml"


def test_config_bad_key_is_one_line_exit_2(tmp_path, capsys):
    status, out, err = run_cli("config", str(write_config(tmp_path / "tiny.toml")), "rule.lrr=0.1", capsys=capsys)
    assert status == 2 and out == ""
    assert "unknown key 'rule.lrr'" in one_line(err)


def test_quiet_train_and_eval_print_nothing(tmp_path, capsys):
    cfg_file = write_config(tmp_path / "tiny.toml")
    out = tmp_path / "run"
    status, loud, _ = run_cli("train", str(cfg_file), "--out", str(tmp_path / "loud"), "train.iterations=2",
                              capsys=capsys)
    assert status == 0 and "run directory" in loud
    assert run_cli("train", str(cfg_file), "--out", str(out), "--quiet", "train.iterations=2",
                   capsys=capsys) == (0, "", "")  # no progress bar (stderr), no table
    assert (out / "test.json").is_file()
    assert run_cli("eval", str(out), "--tasks", "3", "-q", capsys=capsys) == (0, "", "")
    assert (out / "eval-best-steps1-tasks3.json").is_file()


def test_device_flag_sets_train_device(tmp_path, capsys):
    cfg_file = write_config(tmp_path / "tiny.toml")
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg_file), "--out", str(out), "--quiet", "--device", "auto",
                     "train.iterations=2"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["device"] == "auto"
    assert cli.main(["eval", str(out), "--tasks", "2", "--device", "cpu", "--no-write"]) == 0
    # train.device may change on resume (a run continues on another machine)
    assert cli.main(["train", str(cfg_file), "--out", str(out), "--quiet", "--resume", "--device", "cpu",
                     "train.iterations=3"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "eval", "reproduce"])
def test_device_cuda_without_cuda_is_one_line_exit_2(command, tmp_path, capsys):
    target = {"train": str(write_config(tmp_path / "tiny.toml")), "eval": str(tmp_path),
              "reproduce": "sine_rules"}[command]
    status, out, err = run_cli(command, target, "--device", "cuda",
                               *(["--out", str(tmp_path / "o")] if command != "eval" else []), capsys=capsys)
    assert status == 2 and out == ""
    assert "--device is 'cuda' but CUDA is not available" in one_line(err)
    assert not (tmp_path / "o").exists()


def test_bad_device_name_is_one_line_exit_2(tmp_path, capsys):
    status, _, err = run_cli("train", str(write_config(tmp_path / "tiny.toml")), "--device", "gpu0", "--out",
                             str(tmp_path / "o"), capsys=capsys)
    assert status == 2 and "--device: not a device name: 'gpu0'" in one_line(err)
