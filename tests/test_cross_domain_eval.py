"""``innerloop eval RUN --dataset NAME --root DIR --split-file F`` (issue 17): a run trained on the
embedded glyphs tested on an Omniglot-layout root written here; its own result file, test.json untouched."""

from __future__ import annotations

import json

import pytest

from innerloop.data.episodes import FewShotImages
from innerloop.data.images import load_split
from innerloop.experiments.cli import main
from innerloop.experiments.config import load
from innerloop.experiments.train import load_run, train
from run_helpers import one_line
from test_image_loaders import drawing, make_cub, write_toml


class Result:
    def __init__(self, status: int, out: str, err: str):
        self.returncode, self.stdout, self.stderr = status, out, err


@pytest.fixture
def cli(capsys):
    """``innerloop ARGS`` in this process (no interpreter start-up per call)."""
    def run(*args: str) -> Result:
        capsys.readouterr()
        status = main(list(args))
        got = capsys.readouterr()
        return Result(status, got.out, got.err)
    return run

GLYPHS = ["name=g", "task.name=images", "task.dataset=glyphs", "task.n_way=5", "task.k_shot=1", "task.query=2",
          "task.options={instances=3}", "model.name=conv4", "model.channels=8", "algorithm.name=fomaml",
          "train.iterations=2", "train.meta_batch=2", "train.val_every=2", "train.val_tasks=4", "eval.tasks=4",
          "eval.batch=4", "train.execution=loop"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cd") / "run"
    train(load(None, GLYPHS), out, progress=False)
    return out


def omniglot_root(base, chars: int = 7, drawings: int = 3):
    """images_background only, ``chars`` characters of one alphabet; a split file over them."""
    names = []
    for c in range(chars):
        d = base / "images_background" / "Alpha" / f"character{c + 1:02d}"
        d.mkdir(parents=True)
        for j in range(drawings):
            drawing(3 * c + j).save(d / f"{c:04d}_{j + 1:02d}.png")
        names.append(f"Alpha/character{c + 1:02d}")
    split = write_toml(base / "split.toml", train=names[:1], val=names[1:2], test=names[2:])
    return names, split


def test_eval_on_another_dataset_writes_its_own_file(run, tmp_path, cli):
    names, split = omniglot_root(tmp_path / "data")
    test_before = (run / "test.json").read_bytes()
    r = cli("eval", str(run), "--dataset", "omniglot", "--root", str(tmp_path / "data"), "--split-file", str(split),
            "--tasks", "6")
    assert r.returncode == 0, r.stderr
    f = run / "eval-omniglot-best-steps1-tasks6.json"
    res = json.loads(f.read_text())
    assert res["dataset"] == "omniglot" and res["tasks"] == 6 and res["split_file"] == str(split)
    assert (run / "test.json").read_bytes() == test_before
    assert not list(run.glob("eval-best-*.json"))  # not the glyph result's name
    # the same number from the pieces: the run's weights on Omniglot's test classes, fixed by eval.seed
    cfg, _, algo, path, _, _ = load_run(run)
    omni = load_split("omniglot", tmp_path / "data", "test", split_file=split)
    assert omni.classes == names[2:]
    family = FewShotImages({"test": omni}, 5, 1, 2, split="test")
    tasks = family.fixed_tasks(6, cfg.eval.seed)
    want = algo.evaluate(tasks, path).metric.double().mean().item()
    assert res["mean"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--root", "/nowhere"], "give --dataset too"),
    (["--dataset", "omniglot", "--root", "/nowhere/at/all"], "does not exist"),
    (["--dataset", "cifar_fs", "--root", "DATA"], "cifar_fs not found"),
])
def test_eval_dataset_errors_are_one_line_exit_2(run, tmp_path, args, message, cli):
    (tmp_path / "data").mkdir()
    before = sorted(run.glob("eval-*.json"))
    r = cli("eval", str(run), *[a.replace("DATA", str(tmp_path / "data")) for a in args])
    assert r.returncode == 2
    assert message in one_line(r.stderr)
    assert sorted(run.glob("eval-*.json")) == before


def test_eval_dataset_on_a_sine_run_is_refused(tmp_path, cli):
    out = tmp_path / "sine"
    train(load(None, ["train.iterations=1", "eval.tasks=2", "train.val_tasks=2", "model.hidden=[4]"]), out,
          progress=False)
    r = cli("eval", str(out), "--dataset", "omniglot", "--root", str(tmp_path))
    assert r.returncode == 2 and "needs a run on image tasks" in one_line(r.stderr)


def test_model_that_cannot_take_the_images_is_one_line(run, tmp_path, cli):
    names = make_cub(tmp_path / "data", n_classes=7)  # 3×84×84 colour images; the run's model takes 1×28×28
    split = write_toml(tmp_path / "split.toml", train=names[:1], val=names[1:2], test=names[2:])
    before = sorted(run.glob("eval-*.json"))
    r = cli("eval", str(run), "--dataset", "cub", "--root", str(tmp_path / "data"), "--split-file", str(split),
            "--tasks", "2")
    assert r.returncode == 2
    assert "--dataset cub: the run's model cannot take this dataset's images" in one_line(r.stderr)
    assert sorted(run.glob("eval-*.json")) == before
