"""Episode sampling from image splits: invariants, determinism, errors, and a conv4 run end to end."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.data.episodes import FewShotImages
from innerloop.data.images import DATASETS, DatasetError, TensorSplit, register_dataset
from innerloop.experiments.config import load
from innerloop.experiments.train import train


def toy_split(split="train", classes=7, per_class=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # every image of class c carries its class index and image index in two pixels, to track it
    data = []
    for c in range(classes):
        x = torch.randint(0, 256, (per_class, 1, size, size), generator=g, dtype=torch.uint8)
        x[:, 0, 0, 0] = c
        x[:, 0, 0, 1] = torch.arange(per_class, dtype=torch.uint8)
        data.append(x)
    return TensorSplit("toy", split, [f"class{c}" for c in range(classes)], data)


def family(**kw):
    splits = {s: toy_split(s, seed=i) for i, s in enumerate(("train", "val", "test"))}
    return FewShotImages(splits, kw.pop("n_way", 3), kw.pop("k_shot", 2), kw.pop("query", 3), **kw)


def test_episode_shapes_labels_and_disjointness():
    fam = family()
    t = fam.sample(4, torch.Generator().manual_seed(0))
    assert t.support_x.shape == (4, 6, 1, 8, 8) and t.query_x.shape == (4, 9, 1, 8, 8)
    assert t.support_y.dtype == torch.long and t.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert t.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert 0 <= t.support_x.min() and t.support_x.max() <= 1
    for i in range(4):
        cls_s = (t.support_x[i, :, 0, 0, 0] * 255).round().long()
        cls_q = (t.query_x[i, :, 0, 0, 0] * 255).round().long()
        # one class per label, the same class in support and query, distinct classes per task
        for lab in range(3):
            assert cls_s[t.support_y[i] == lab].unique().numel() == 1
            assert torch.equal(cls_s[t.support_y[i] == lab].unique(), cls_q[t.query_y[i] == lab].unique())
        assert cls_s.unique().numel() == 3
        ids_s = set(zip(cls_s.tolist(), (t.support_x[i, :, 0, 0, 1] * 255).round().long().tolist(), strict=True))
        ids_q = set(zip(cls_q.tolist(), (t.query_x[i, :, 0, 0, 1] * 255).round().long().tolist(), strict=True))
        assert not ids_s & ids_q and len(ids_s) == 6 and len(ids_q) == 9


def test_labels_are_remapped_randomly():
    fam = family()
    t = fam.sample(20, torch.Generator().manual_seed(1))
    first = {int((t.support_x[i, 0, 0, 0, 0] * 255).round()) for i in range(20)}
    assert len(first) > 1  # label 0 is not always the same class


def test_determinism_and_split_switch():
    fam = family()
    a, b = fam.fixed_tasks(3, 5), fam.fixed_tasks(3, 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    v = fam.for_split("val")
    assert v.data.split == "val" and not torch.equal(v.fixed_tasks(3, 5).support_x, a.support_x)


def test_rotation_turns_whole_classes():
    fam = family(rotate=True, k_shot=1, query=1)
    t = fam.sample(30, torch.Generator().manual_seed(0))
    # the class marker pixel moves with the rotation: some tasks show it away from (0, 0)
    corner = (t.support_x[:, :, 0, 0, 0] * 255).round().long()
    assert (corner > 6).any() and (corner <= 6).any()


def test_not_enough_classes_or_images_is_a_clear_error():
    with pytest.raises(DatasetError, match="7 classes, fewer than n_way=9"):
        family(n_way=9)
    with pytest.raises(DatasetError, match=r"fewer than k_shot \+ query = 8 images: class0 \(6\)"):
        family(k_shot=4, query=4)


@pytest.fixture
def toy_dataset():
    if "toy-test" not in DATASETS:
        register_dataset("toy-test", "generated in tests")(lambda root, split, **kw: toy_split(split, classes=6))
    yield "toy-test"


def test_conv4_runs_end_to_end_on_an_image_family(tmp_path, toy_dataset):
    cfg = load(None, ["task.name=images", f"task.dataset={toy_dataset}", "task.n_way=3", "task.k_shot=1",
                      "task.query=2", "model.name=conv4", "model.channels=4", "model.depth=2", "train.iterations=2",
                      "train.meta_batch=2", "train.val_tasks=3", "eval.tasks=4", "algorithm.inner_steps=2",
                      "rule.name=meta_sgd", "rule.lr=0.1"])
    res = train(cfg, tmp_path / "run", progress=False)
    assert res["metric"] == "accuracy" and math.isfinite(res["mean"])
    assert res["path"] == ("threads" if torch.get_num_threads() > 1 else "loop")


def test_model_and_task_shapes_must_agree(tmp_path):
    from innerloop.experiments.config import ConfigError

    with pytest.raises(ConfigError, match="conv4 needs image tasks"):
        train(load(None, ["model.name=conv4", "train.iterations=1"]), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="unknown dataset"):
        train(load(None, ["task.name=images", "task.dataset=nope", "train.iterations=1"]), tmp_path / "s",
              progress=False)


def test_loader_options_are_checked(tmp_path, toy_dataset):
    from innerloop.experiments.config import ConfigError

    with pytest.raises(DatasetError, match="has no option colour"):
        train(load(None, ["task.name=images", f"task.dataset={toy_dataset}", "task.options={colour = 1}",
                          "model.name=conv4", "train.iterations=1"]), tmp_path / "r", progress=False)
    assert issubclass(DatasetError, ConfigError.__mro__[1])  # both are UserErrors: one line, exit 2
