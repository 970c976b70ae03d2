"""Config validation, the CLI, training, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from innerloop.experiments import checkpoint as ckpt
from innerloop.experiments.cli import main
from innerloop.experiments.config import ConfigError, apply_overrides, load
from innerloop.experiments.train import RunInterrupted, evaluate_run, mean_ci, train

TINY = [
    "model.hidden=[8]",
    "task.query=10",
    "train.meta_batch=4",
    "train.val_every=3",
    "train.val_tasks=5",
    "train.log_every=2",
    "train.checkpoint_every=100",
    "eval.tasks=7",
    "eval.batch=3",
]


def test_unknown_keys_are_listed_with_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load(None, ["rule.name=meta_sgd", "rule.lrr=0.1", "train.iters=3"])
    msg = str(e.value)
    assert "rule.lrr" in msg and "valid keys in [rule]: name, lr" in msg
    assert "train.iters" in msg and "iterations" in msg


def test_a_tilde_override_drops_a_key_so_the_rule_can_change(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[rule]\nname = "sgd"\nlr = 0.05\n')
    with pytest.raises(ConfigError, match=r"unknown key 'rule.lr'.*drop it with ~rule.lr"):
        load(cfg_file, ["rule.name=mlplr"])
    cfg = load(cfg_file, ["rule.name=mlplr", "~rule.lr", "rule.lr_max=1.0"])
    assert cfg.rule.name == "mlplr" and cfg.rule.lr_max == 1.0
    with pytest.raises(ConfigError, match="no key 'rule.nope' to drop"):
        load(cfg_file, ["~rule.nope"])
    assert main(["train", str(cfg_file), "rule.name=mlplr", "~rule.lr", "train.iterations=2", *TINY,
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["rule"]["name"] == "mlplr"


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.meta_batch"):
        load(None, ["train.meta_batch=many"])
    with pytest.raises(ConfigError, match=r"rule"):
        load(None, ["rule.name=adamw"])


def test_overrides_parse_toml_values():
    d = apply_overrides({}, ["--model.hidden=[1, 2]", "rule.lr=0.5", "train.execution=loop", "x.y=true"])
    assert d == {"model": {"hidden": [1, 2]}, "rule": {"lr": 0.5}, "train": {"execution": "loop"},
                 "x": {"y": True}}


def test_config_file_and_fomaml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[algorithm]\nname = "fomaml"\ninner_steps = 3\n[rule]\nname = "lslr"\n')
    cfg = load(f, ["rule.lr=0.2"])
    assert cfg.algorithm.first_order and cfg.algorithm.inner_steps == 3 and cfg.rule.lr == 0.2


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nfoo = 1\n")
    r = subprocess.run([sys.executable, "-m", "innerloop", "train", str(bad), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "train.foo" in r.stderr
    r = subprocess.run([sys.executable, "-m", "innerloop", "eval", str(tmp_path / "nothing")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a run directory" in r.stderr and "Traceback" not in r.stderr


def test_mean_ci():
    m, ci = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5
    assert ci == pytest.approx(1.96 * torch.tensor([1.0, 2, 3, 4]).std().item() / 2)


def test_train_writes_run_directory_and_tests_best(tmp_path):
    cfg = load(None, [*TINY, "rule.name=meta_sgd", "train.iterations=6"])
    res = train(cfg, tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt", "test.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["rule"]["name"] == "meta_sgd"
    assert res["tasks"] == 7 and math.isfinite(res["mean"]) and res["ci95"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val" in r for r in rows) and rows[-1]["event"] == "test"
    # the best checkpoint is the one with the lowest validation MSE
    vals = {r["iteration"]: r["val"] for r in rows if "val" in r}
    assert ckpt.load_torch(tmp_path / "run" / "best.pt")["iteration"] == min(vals, key=vals.get)
    # re-testing gives the same number (fixed tasks)
    assert evaluate_run(tmp_path / "run", write=False)["mean"] == pytest.approx(res["mean"], rel=1e-6)


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = load(None, [*TINY, "train.iterations=1"])
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("execution,prefetch", [("loop", 2), ("vmap", 2), ("vmap", 0)])
def test_resume_is_exact(tmp_path, execution, prefetch):
    """N iterations straight == N/2, stop, resume, N/2 (bit for bit), with and without prefetching."""
    over = [*TINY, "rule.name=meta_sgd", "train.iterations=8", f"train.execution={execution}",
            f"train.prefetch={prefetch}"]
    cfg = load(None, over)
    train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(RunInterrupted):
        train(cfg, tmp_path / "split", progress=False, stop_at=4)
    assert ckpt.load_torch(tmp_path / "split" / "last.pt")["iteration"] == 4
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a = ckpt.load_torch(tmp_path / "straight" / "last.pt")
    b = ckpt.load_torch(tmp_path / "split" / "last.pt")
    assert a["iteration"] == b["iteration"] == 8
    for k in a["algorithm"]:
        assert torch.equal(a["algorithm"][k], b["algorithm"][k]), k
    assert a["best_iteration"] == b["best_iteration"]


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = load(None, [*TINY, "train.iterations=2"])
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="rule.lr"):
        train(load(None, [*TINY, "train.iterations=4", "rule.lr=0.1"]), tmp_path / "run", resume=True,
              progress=False)
    res = train(load(None, [*TINY, "train.iterations=4"]), tmp_path / "run", resume=True, progress=False)
    assert res["iteration"] in (3, 4)


def test_random_init_with_plain_sgd_trains_nothing_and_tests(tmp_path):
    cfg = load(None, [*TINY, "algorithm.name=random_init", "train.iterations=2"])
    res = train(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(res["mean"])


def test_cli_train_and_eval(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('name = "t"\n[task]\nname = "linear"\ndim = 5\n[model]\nname = "logreg"\n')
    assert main(["train", str(f), "--out", str(tmp_path / "r"), "--no-progress", "train.iterations=3",
                 "train.meta_batch=2", "eval.tasks=4", "train.val_tasks=4"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "±" in out
    assert main(["eval", str(tmp_path / "r"), "--tasks", "6", "--steps", "2", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert " 6 " in out and "accuracy" in out


def test_demo_runs_both_rules_and_prints_a_table(tmp_path, capsys):
    assert main(["demo", "--iterations", "2", "--glyph-iterations", "2", "--glyph-tasks", "4", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sine-maml" in out and "sine-meta_sgd" in out and "glyphs-anil-5w1s" in out
    assert out.count("±") == 5  # two headers, three rows
    assert (tmp_path / "sine-meta_sgd" / "test.json").exists()
    res = json.loads((tmp_path / "glyphs-anil-5w1s" / "test.json").read_text())
    assert res["metric"] == "accuracy" and res["tasks"] == 4 and res["inner_steps"] == 10


def test_auto_path_follows_the_measurements():
    from innerloop import MAML, SGD
    from innerloop.experiments.build import choose_path
    from innerloop.models import MLP, Conv4

    cpu = torch.device("cpu")
    mk = lambda m: MAML(m, SGD(0.1), loss_fn=None, metric_fn=None, inner_steps=1)
    assert choose_path(mk(MLP(1, [4], 1)), "auto", cpu) == "vmap"
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert choose_path(mk(Conv4((1, 8, 8), 2, channels=2, depth=1)), "auto", cpu) == "threads"
        torch.set_num_threads(1)
        assert choose_path(mk(Conv4((1, 8, 8), 2, channels=2, depth=1)), "auto", cpu) == "loop"
    finally:
        torch.set_num_threads(n)
    assert choose_path(mk(Conv4((1, 8, 8), 2, channels=2, depth=1)), "vmap", cpu) == "vmap"


def test_divergence_is_one_line_and_clipping_is_applied(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    r = subprocess.run([sys.executable, "-m", "innerloop", "train", str(tmp_path / "empty.toml"), "--out",
                        str(tmp_path / "r"), "--no-progress", *TINY, "train.iterations=50", "train.optimizer=sgd",
                        "train.meta_lr=1e6"], capture_output=True, text=True)
    assert r.returncode == 1 and "diverged" in r.stderr and "Traceback" not in r.stderr
    cfg = load(None, [*TINY, "train.iterations=3", "train.optimizer=sgd", "train.meta_lr=1e6",
                      "train.clip_grad_norm=1e-3"])
    assert math.isfinite(train(cfg, tmp_path / "clipped", progress=False)["mean"])


def test_test_tasks_csv_holds_each_test_tasks_values(tmp_path):
    import csv

    out = tmp_path / "run"
    (tmp_path / "c.toml").write_text('name = "csv"\n')
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(out), "--no-progress", "train.iterations=2",
                 *TINY]) == 0
    test = json.loads((out / "test.json").read_text())
    with (out / "test_tasks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["task"]) for r in rows] == list(range(test["tasks"]))
    values = [float(r[test["metric"]]) for r in rows]
    assert math.isclose(sum(values) / len(values), test["mean"], rel_tol=1e-12)
    assert all(math.isfinite(float(r["query_loss"])) for r in rows)
