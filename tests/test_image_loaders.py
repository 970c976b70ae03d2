"""On-disk image loaders: every layout from tiny fixtures written here, the split rules on synthetic
class lists, the built-in class lists, every bad-input message, and ``innerloop data check``."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from innerloop.data.episodes import FewShotImages
from innerloop.data.images import (
    DATASETS,
    DatasetError,
    FileSplit,
    TensorSplit,
    aircraft,
    cifar,
    cub,
    dogs,
    load_split,
    mini_imagenet,
    omniglot,
    tiered_imagenet,
)
from innerloop.data.images._common import LOCATORS, builtin_split, builtin_table, read_split_file
from innerloop.experiments.cli import main

NAMES = ("omniglot", "mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "cub", "aircraft", "dogs")


# ---- fixture writers ---------------------------------------------------------------------------
def write_image(path: Path, size=(12, 10), color=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def png_bytes(size=(20, 20), color=(0, 128, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_toml(path: Path, **splits) -> Path:
    path.write_text("".join(f"{k} = {list(v)!r}\n".replace("'", '"') for k, v in splits.items()))
    return path


def drawing(k: int) -> Image.Image:
    """A 105x105 Omniglot-like drawing: white paper, a black stroke whose place encodes k."""
    im = Image.new("L", (105, 105), 255)
    x = 10 + 7 * (k % 10)
    im.paste(0, (x, 20, x + 20, 85))
    return im.convert("1")


OMNI = {"images_background": {"Alpha_A": 3, "Alpha_B": 2}, "images_evaluation": {"Alpha_C": 3}}


def make_omniglot(base: Path, drawings: int = 3) -> list[str]:
    names, k = [], 0
    for part, alphabets in OMNI.items():
        for alpha, n in alphabets.items():
            for c in range(1, n + 1):
                d = base / part / alpha / f"character{c:02d}"
                d.mkdir(parents=True)
                for j in range(drawings):
                    drawing(k).save(d / f"{k:04d}_{j + 1:02d}.png")
                names.append(f"{alpha}/character{c:02d}")
                k += 1
    return names


def zip_omniglot(src: Path, dst: Path):
    dst.mkdir(parents=True, exist_ok=True)
    for part in OMNI:
        with zipfile.ZipFile(dst / f"{part}.zip", "w") as zf:
            for f in sorted((src / part).rglob("*.png")):
                zf.write(f, f.relative_to(src).as_posix())


OMNI_SPLIT = {"train": ["Alpha_A/character01", "Alpha_A/character02", "Alpha_B/character01"],
              "val": ["Alpha_B/character02", "Alpha_A/character03"],
              "test": ["Alpha_C/character01", "Alpha_C/character02", "Alpha_C/character03"]}


@pytest.fixture(autouse=True)
def _fresh_memos():
    omniglot._MEMO.clear()
    cifar._MEMO.clear()
    yield
    omniglot._MEMO.clear()
    cifar._MEMO.clear()


def test_every_loader_is_registered_with_layouts_and_a_locator():
    for name in NAMES:
        assert name in DATASETS and name in LOCATORS
        assert DATASETS[name].layouts.strip()
    assert DATASETS["omniglot"].rotate and not DATASETS["cub"].rotate
    assert "68d2efa1b9178cc56df9314c21c6e718" in DATASETS["omniglot"].layouts  # published zip md5
    assert "16019d7e3df5f24257cddd939b257f8d" in DATASETS["cifar_fs"].layouts


# ---- Omniglot ------------------------------------------------------------------------------------
def test_omniglot_folders_28px_inverted_with_split_file(tmp_path):
    make_omniglot(tmp_path / "omniglot")
    sf = write_toml(tmp_path / "split.toml", **OMNI_SPLIT)
    data = load_split("omniglot", tmp_path, "train", split_file=sf, cache=False)
    assert isinstance(data, TensorSplit) and data.classes == OMNI_SPLIT["train"]
    assert data.image_shape == (1, 28, 28) and data.count(0) == 3
    x = data.images(0, [0, 1])
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 28, 28)
    assert x[0, 0, 0, 0] == 0 and x[0, 0, 14].max() > 200  # inverted: paper 0, strokes bright
    test = load_split("omniglot", tmp_path, "test", split_file=sf, cache=False)
    assert test.classes == OMNI_SPLIT["test"]
    assert not torch.equal(data.images(0, [0]), data.images(1, [0]))  # characters differ


def test_omniglot_zip_and_torchvision_layouts_match_folders(tmp_path):
    make_omniglot(tmp_path / "a")
    zip_omniglot(tmp_path / "a", tmp_path / "b" / "omniglot")
    make_omniglot(tmp_path / "c" / "omniglot-py")
    sf = write_toml(tmp_path / "split.toml", **OMNI_SPLIT)
    assert omniglot.LOCATOR.locate(tmp_path / "b").layout == "zip archives"
    assert "torchvision" in omniglot.LOCATOR.locate(tmp_path / "c").layout
    ref = load_split("omniglot", tmp_path / "a", "val", split_file=sf, cache=False)
    for root in (tmp_path / "b", tmp_path / "c"):
        got = load_split("omniglot", root, "val", split_file=sf, cache=False)
        assert got.classes == ref.classes
        assert all(torch.equal(g, r) for g, r in zip(got.data, ref.data, strict=True))
    assert not any(p.suffix in (".png", ".tmp") for p in (tmp_path / "b" / "omniglot").iterdir())  # nothing extracted


def test_omniglot_from_images_background_alone(tmp_path):
    make_omniglot(tmp_path / "a" / "omniglot")
    shutil.rmtree(tmp_path / "a" / "omniglot" / "images_evaluation")
    (tmp_path / "b" / "omniglot").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "b" / "omniglot" / "images_background.zip", "w") as zf:
        for f in sorted((tmp_path / "a" / "omniglot" / "images_background").rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path / "a" / "omniglot").as_posix())
    assert omniglot.LOCATOR.locate(tmp_path / "a").layout == "image folders (images_background only)"
    assert omniglot.LOCATOR.locate(tmp_path / "b").layout == "zip archives (images_background only)"
    background = {"train": ["Alpha_A/character01", "Alpha_A/character02"], "val": ["Alpha_A/character03"],
                  "test": ["Alpha_B/character01", "Alpha_B/character02"]}
    sf = write_toml(tmp_path / "split.toml", **background)
    for root in (tmp_path / "a", tmp_path / "b"):
        got = load_split("omniglot", root, "test", split_file=sf, cache=False)
        assert got.classes == background["test"] and got.data[0].shape == (3, 1, 28, 28)
        with pytest.raises(DatasetError, match="only images_background.*split_rule=background"):
            load_split("omniglot", root, "train", split_rule="vinyals", cache=False)
    names = [f"alpha{a:02d}/character{c:02d}" for a in range(30) for c in range(1, 34)][:964]
    split = omniglot.maml_split(names, omniglot.BACKGROUND_SIZES)
    assert [len(split[s]) for s in ("train", "val", "test")] == [664, 100, 200]


def test_omniglot_maml_rule_on_synthetic_1623_characters():
    names = [f"alpha{a:02d}/character{c:02d}" for a in range(50) for c in range(1, 34)][:1623]
    split = omniglot.maml_split(names)
    assert [len(split[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(names)
    shuffled = list(names)
    random.Random(5).shuffle(shuffled)
    assert omniglot.maml_split(shuffled) == split  # independent of listing order: names are sorted first
    # pinned: sorted names, then random.Random(1).shuffle (MAML's generator and seed)
    assert split["train"][:3] == ["alpha21/character21", "alpha32/character26", "alpha47/character27"]
    assert split["val"][:2] == ["alpha47/character02", "alpha36/character32"]


ALPHABETS = {  # Omniglot's 50 alphabets and their character counts (964 background + 659 evaluation)
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
    "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
    "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43,
    "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
    "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42,
    "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
    "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26, "Ge_ez": 26,
    "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47, "Manipuri": 40, "Mongolian": 30,
    "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23, "Tengwar": 25,
    "Tibetan": 42, "ULOG": 26,
}


def test_omniglot_vinyals_rule_on_the_real_alphabet_sizes():
    names = [f"{a}/character{c:02d}" for a, n in ALPHABETS.items() for c in range(1, n + 1)]
    assert len(names) == 1623
    split = omniglot.vinyals_split(names)
    assert [len(split[s]) for s in ("train", "val", "test")] == [1028, 172, 423]
    assert "Gurmukhi/character41" in split["train"] and "Gurmukhi/character42" in split["test"]
    assert {n.split("/")[0] for n in split["val"]} == {"Armenian", "Bengali", "Early_Aramaic", "Hebrew",
                                                       "Mkhedruli_(Georgian)"}
    with pytest.raises(DatasetError, match="alphabet 'Armenian' of Vinyals' val split not found"):
        omniglot.vinyals_split([n for n in names if not n.startswith("Armenian/")])


def test_omniglot_default_rules_on_a_tiny_fixture(tmp_path, monkeypatch):
    names = make_omniglot(tmp_path)
    monkeypatch.setattr(omniglot, "MAML_SIZES", (4, 2))
    parts = [load_split("omniglot", tmp_path, s, cache=False).classes for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [4, 2, 2] and sorted(sum(parts, [])) == sorted(names)
    with pytest.raises(DatasetError, match="unknown split_rule 'foo'"):
        load_split("omniglot", tmp_path, "train", split_rule="foo", cache=False)
    with pytest.raises(DatasetError, match="alphabet 'Armenian' of Vinyals' val split not found"):
        load_split("omniglot", tmp_path, "val", split_rule="vinyals", cache=False)


def test_omniglot_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    make_omniglot(tmp_path)
    sf = write_toml(tmp_path / "split.toml", **OMNI_SPLIT)
    # a failing write leaves nothing behind and the data still loads
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    first = load_split("omniglot", tmp_path, "train", split_file=sf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background", "images_evaluation", "split.toml"]
    monkeypatch.undo()
    omniglot._MEMO.clear()
    load_split("omniglot", tmp_path, "train", split_file=sf)
    assert (tmp_path / omniglot.CACHE_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the cache is used: decoding would fail now
    omniglot._MEMO.clear()
    monkeypatch.setattr(omniglot, "_decode_all", lambda chars: pytest.fail("decoded although cached"))
    again = load_split("omniglot", tmp_path, "train", split_file=sf)
    assert all(torch.equal(a, b) for a, b in zip(first.data, again.data, strict=True))
    # a changed file invalidates it
    omniglot._MEMO.clear()
    drawing(9).save(next((tmp_path / "images_background" / "Alpha_A" / "character01").iterdir()))
    with pytest.raises(pytest.fail.Exception):
        load_split("omniglot", tmp_path, "train", split_file=sf)


def test_omniglot_unwritable_folder_skips_the_cache(tmp_path, monkeypatch):
    make_omniglot(tmp_path)
    monkeypatch.setattr(omniglot.tempfile, "mkstemp", lambda **k: (_ for _ in ()).throw(PermissionError("ro")))
    load_split("omniglot", tmp_path, "train", split_file=write_toml(tmp_path / "s.toml", **OMNI_SPLIT))
    assert not (tmp_path / omniglot.CACHE_NAME).exists()


# ---- miniImageNet ------------------------------------------------------------------------------
MINI = {"train": ["n00000001", "n00000002", "n00000003"], "val": ["n00000004", "n00000005"],
        "test": ["n00000006", "n00000007"]}


def write_mini_pickles(d: Path, per_class=4, val_name="val"):
    d.mkdir(parents=True, exist_ok=True)
    for split, classes in MINI.items():
        n = len(classes) * per_class
        data = np.zeros((n, 84, 84, 3), np.uint8)
        data[:, 0, 0, 0] = np.arange(n)  # row id in a pixel
        class_dict = {c: list(range(i * per_class, (i + 1) * per_class)) for i, c in enumerate(classes)}
        name = val_name if split == "val" else split
        with open(d / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)


def test_mini_imagenet_cache_pickles(tmp_path):
    write_mini_pickles(tmp_path / "mini-imagenet", val_name="validation")
    train = load_split("mini_imagenet", tmp_path, "train")
    assert train.classes == MINI["train"] and train.image_shape == (3, 84, 84)
    x = train.images(1, [0, 3])
    assert x.shape == (2, 3, 84, 84) and x[:, 0, 0, 0].tolist() == [4, 7]
    assert load_split("mini_imagenet", tmp_path, "val").classes == MINI["val"]  # the -validation.pkl name
    sf = write_toml(tmp_path / "s.toml", train=["n00000006", "n00000001"], val=["n00000002"], test=["n00000004"])
    mixed = load_split("mini_imagenet", tmp_path, "train", split_file=sf)
    assert mixed.classes == ["n00000006", "n00000001"]
    assert mixed.images(0, [0])[0, 0, 0, 0] == 0 and mixed.images(1, [1])[0, 0, 0, 0] == 1


def test_mini_imagenet_ravi_csv_and_class_folders(tmp_path):
    csv_root = tmp_path / "a" / "miniImageNet"
    for split, classes in MINI.items():
        with open(csv_root.parent.mkdir(parents=True, exist_ok=True) or csv_root.mkdir(exist_ok=True) or
                  csv_root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            for c in classes:
                for j in range(2):
                    name = f"{c}{j:08d}.jpg"
                    sub = csv_root / "images" / (c if c == "n00000005" else "")  # both image placements
                    write_image(sub / name, size=(100, 90))
                    w.writerow([name, c])
    data = load_split("mini_imagenet", tmp_path / "a", "val")
    assert isinstance(data, FileSplit) and data.classes == MINI["val"]
    assert data.images(1, [0, 1]).shape == (2, 3, 84, 84)
    folder_root = tmp_path / "b"
    for split, classes in MINI.items():
        for c in classes:
            write_image(folder_root / ("validation" if split == "val" else split) / c / "x.jpg")
    assert mini_imagenet.LOCATOR.locate(folder_root).layout == "class folders"
    test = load_split("mini_imagenet", folder_root, "test")
    assert test.classes == MINI["test"] and test.images(0, [0]).shape == (1, 3, 84, 84)
    sf = write_toml(tmp_path / "s.toml", train=["n00000007", "n00000001"])
    assert load_split("mini_imagenet", folder_root, "train", split_file=sf).classes == ["n00000007", "n00000001"]


def test_mini_imagenet_reference_lists_are_ravis_64_16_20():
    ref = mini_imagenet.reference_split()
    assert [len(ref[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set(sum(ref.values(), []))) == 100
    assert "n01532829" in ref["train"] and "n01855672" in ref["val"] and "n01930112" in ref["test"]


# ---- tieredImageNet ----------------------------------------------------------------------------
def write_tiered(d: Path, variant="ren"):
    d.mkdir(parents=True, exist_ok=True)
    for s, wnids in {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}.items():
        labels = np.repeat(np.arange(len(wnids)), 3)
        blobs = [png_bytes(color=(int(k) * 40, 0, 0)) for k in labels]
        if variant == "ren":
            lab = {"label_specific": labels, "label_general": labels * 0, "label_specific_str": wnids,
                   "label_general_str": ["g"]}
        else:  # encoded arrays (cv2.imencode style), a 'labels' key and no names
            blobs = [np.frombuffer(b, np.uint8) for b in blobs]
            lab = {"labels": labels.tolist()}
        for name, obj in ((f"{s}_images_png.pkl", blobs), (f"{s}_labels.pkl", lab)):
            with open(d / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)


def test_tiered_imagenet_pickles_and_label_variants(tmp_path):
    write_tiered(tmp_path / "tiered-imagenet")
    data = load_split("tiered_imagenet", tmp_path, "train")
    assert data.classes == ["n01", "n02", "n03"] and data.count(2) == 3
    x = data.images(2, [0, 2])
    assert x.shape == (2, 3, 84, 84) and x.dtype == torch.uint8 and int(x[0, 0, 0, 0]) == 80
    write_tiered(tmp_path / "b" / "tieredImageNet", variant="arrays")
    other = load_split("tiered_imagenet", tmp_path / "b", "val")
    assert other.classes == ["class000", "class001"] and other.images(1, [0])[0, 0, 5, 5] == 40
    assert torch.equal(pickle.loads(pickle.dumps(data)).images(2, [0]), x[:1])
    sf = write_toml(tmp_path / "s.toml", test=["n06", "n02"])
    picked = load_split("tiered_imagenet", tmp_path, "test", split_file=sf)
    assert picked.classes == ["n06", "n02"] and int(picked.images(1, [0])[0, 0, 0, 0]) == 40


def test_tiered_label_parsing_rejects_bad_labels(tmp_path):
    with pytest.raises(DatasetError, match="none of the label keys"):
        tiered_imagenet.parse_labels({"foo": [1]}, tmp_path / "x.pkl")
    with pytest.raises(DatasetError, match="label 3 but only 2 class names"):
        tiered_imagenet.parse_labels({"label_specific": [0, 3], "label_specific_str": ["a", "b"]}, tmp_path / "x")
    labels, names = tiered_imagenet.parse_labels({"label": [1, 0], "label_str": [b"x", b"y"]}, tmp_path / "x")
    assert labels.tolist() == [1, 0] and names == ["x", "y"]


# ---- CIFAR-FS and FC100 --------------------------------------------------------------------------
def write_cifar(d: Path):
    d.mkdir(parents=True)
    fine = cifar.fine_names()
    coarse = sorted(cifar.superclasses())
    parent = {f: coarse.index(s) for s, fs in cifar.superclasses().items() for f in fs}
    for name, per in (("train", 2), ("test", 1)):
        labels = np.repeat(np.arange(100), per)
        data = np.zeros((len(labels), 3072), np.uint8)
        data[:, 0] = labels  # class id in the first red pixel
        data[:, 1] = 0 if name == "train" else 1  # which file
        batch = {"filenames": ["x"] * len(labels), "batch_label": name, "fine_labels": labels.tolist(),
                 "coarse_labels": [parent[fine[k]] for k in labels], "data": data}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": coarse}, f, protocol=2)


def test_cifar_fs_and_fc100_from_the_python_pickles(tmp_path):
    write_cifar(tmp_path / "cifar-100-python")
    fs = [load_split("cifar_fs", tmp_path, s) for s in ("train", "val", "test")]
    assert [len(d.classes) for d in fs] == [64, 16, 20]
    train = fs[0]
    assert train.image_shape == (3, 32, 32) and train.count(0) == 3  # train + test merged
    k = cifar.fine_names().index(train.classes[0])
    x = train.images(0, [0, 1, 2])
    assert x[:, 0, 0, 0].tolist() == [k, k, k] and x[:, 0, 0, 1].tolist() == [0, 0, 1]  # train images first
    fc = [load_split("fc100", tmp_path, s) for s in ("train", "val", "test")]
    assert [len(d.classes) for d in fc] == [60, 20, 20]
    assert set(fc[2].classes) == {f for s in ("aquatic_mammals", "insects", "medium_mammals", "people")
                                  for f in cifar.superclasses()[s]}
    sf = write_toml(tmp_path / "s.toml", train=["people", "apple"])  # FC100 lists may name superclasses
    assert load_split("fc100", tmp_path, "train", split_file=sf).classes == ["baby", "boy", "girl", "man", "woman",
                                                                             "apple"]


def test_cifar_fs_class_folders_with_split_text_files(tmp_path):
    root = tmp_path / "cifar100"
    classes = ["apple", "bear", "cloud", "dolphin", "maple_tree", "rocket"]
    for i, c in enumerate(classes):
        for j in range(2):
            write_image(root / "data" / c / f"{c}_{j}.png", size=(32, 32), color=(i * 10, j, 0))
    (root / "splits" / "bertinetto").mkdir(parents=True)
    for s, names in (("train", classes[:2]), ("val", classes[2:4]), ("test", classes[4:])):
        (root / "splits" / "bertinetto" / f"{s}.txt").write_text("\n".join(names) + "\n")
    val = load_split("cifar_fs", tmp_path, "val")
    assert val.classes == ["cloud", "dolphin"] and val.images(1, [1])[0, :, 0, 0].tolist() == [30, 1, 0]
    # FC100 on the same folders: no fc100 text files, so the built-in superclass split is used
    with pytest.raises(DatasetError, match="fc100: class 'aquarium_fish' and 55 more of the train split in the "
                                           "built-in fc100 split not found in the data"):
        load_split("fc100", tmp_path, "train")


def test_cifar_builtin_lists():
    fs = builtin_split("cifar_fs_bertinetto", "cifar_fs")
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(sum(fs.values(), [])) == cifar.fine_names()
    fc = builtin_table("fc100_oreshkin")
    assert [len(fc[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == sorted(cifar.superclasses())
    assert all(len(v) == 5 for v in cifar.superclasses().values())


# ---- CUB, Aircraft, Dogs -------------------------------------------------------------------------
def make_cub(base: Path, n_classes=8, per_class=3) -> list[str]:
    names = [f"{i + 1:03d}.Bird_{i}" for i in range(n_classes)]
    for i, c in enumerate(names):
        for j in range(per_class):
            write_image(base / "CUB_200_2011" / "images" / c / f"{c}_{j}.jpg", size=(30, 40), color=(i * 20, j * 50, 9))
    return names


def test_cub_closer_look_rule_and_lazy_decoding(tmp_path):
    names = make_cub(tmp_path)
    parts = {s: load_split("cub", tmp_path, s) for s in ("train", "val", "test")}
    assert parts["train"].classes == names[0::2]
    assert parts["val"].classes == [names[1], names[5]] and parts["test"].classes == [names[3], names[7]]
    x = parts["train"].images(1, [2])
    assert isinstance(parts["train"], FileSplit) and x.shape == (1, 3, 84, 84) and x.dtype == torch.uint8
    again = pickle.loads(pickle.dumps(parts["train"]))  # DataLoader workers get a copy of the split
    assert torch.equal(again.images(1, [2]), x)
    fam = FewShotImages(parts, n_way=2, k_shot=1, query=2)
    assert fam.sample(2, torch.Generator().manual_seed(0)).query_x.shape == (2, 4, 3, 84, 84)
    rule = cub.closer_look_split([f"{i:03d}.x" for i in range(200)][::-1])
    assert [len(rule[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert rule["val"][:2] == ["001.x", "005.x"] and rule["test"][:2] == ["003.x", "007.x"]


def test_aircraft_variants_banner_cut_and_meta_dataset_split(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    split = builtin_split("aircraft_meta_dataset", "aircraft")
    variants = split["train"] + split["val"] + split["test"]
    lines = {"train": [], "val": [], "test": []}
    for i, v in enumerate(variants):
        im = Image.new("RGB", (40, 60), (0, 0, 0))
        im.paste((255, 255, 255), (0, 40, 40, 60))  # the 20-pixel banner at the bottom
        (data / "images").mkdir(parents=True, exist_ok=True)
        im.save(data / "images" / f"{1000000 + i}.jpg", quality=95)
        lines[("train", "val", "test")[i % 3]].append(f"{1000000 + i} {v}")
    for s, ls in lines.items():
        (data / f"images_variant_{s}.txt").write_text("\n".join(ls) + "\n")
    parts = [load_split("aircraft", tmp_path, s) for s in ("train", "val", "test")]
    assert [len(p.classes) for p in parts] == [70, 15, 15]
    assert parts[1].classes == split["val"] and "F/A-18" in parts[0].classes
    x = parts[0].images(0, [0])
    assert x.shape == (1, 3, 84, 84) and int(x.max()) < 60  # banner gone: the image is (near) black


def make_dogs(base: Path, per_class=1):
    table = builtin_split("dogs_li", "dogs")
    breeds = sorted(table["train"] + table["val"] + table["test"])
    for b in breeds:
        for j in range(per_class):
            write_image(base / "StanfordDogs" / "Images" / b / f"{b.split('-')[0]}_{j}.jpg")
    return table


def test_dogs_li_split_on_breed_folders(tmp_path):
    table = make_dogs(tmp_path)
    parts = [load_split("dogs", tmp_path, s) for s in ("train", "val", "test")]
    assert [len(p.classes) for p in parts] == [70, 20, 30]
    assert parts[2].classes == table["test"] and parts[0].images(3, [0]).shape == (1, 3, 84, 84)
    assert len(set(sum((p.classes for p in parts), []))) == 120


# ---- split files ----------------------------------------------------------------------------------
def test_split_file_formats_and_errors(tmp_path):
    names = make_cub(tmp_path)
    sj = tmp_path / "s.json"
    sj.write_text(json.dumps({"train": [names[3], names[1]], "test": [names[0]]}))
    assert load_split("cub", tmp_path, "train", split_file=sj).classes == [names[3], names[1]]
    with pytest.raises(DatasetError, match=r"cub: split file .*s.json has no 'val' list"):
        load_split("cub", tmp_path, "val", split_file=sj)
    sf = write_toml(tmp_path / "bad.toml", train=[names[0], "999.Dodo"])
    with pytest.raises(DatasetError, match=r"cub: class '999.Dodo' of the train split in split file .*bad.toml not "
                                           r"found in the data \(8 classes found\)"):
        load_split("cub", tmp_path, "train", split_file=sf)
    dup = write_toml(tmp_path / "dup.toml", train=[names[0]], test=[names[0]])
    with pytest.raises(DatasetError, match="lists class '001.Bird_0' in both train and test"):
        read_split_file(dup, "cub")
    (tmp_path / "broken.toml").write_text("train = [\n")
    with pytest.raises(DatasetError, match=r"broken.toml is not valid TOML") as e:
        read_split_file(tmp_path / "broken.toml", "cub")
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="split file .*nope.toml not found"):
        load_split("cub", tmp_path, "train", split_file=tmp_path / "nope.toml")
    (tmp_path / "typed.toml").write_text("train = [1, 2]\n")
    with pytest.raises(DatasetError, match="'train' must be a list of class names"):
        read_split_file(tmp_path / "typed.toml", "cub")


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_missing_root_or_dataset_names_dataset_paths_and_layouts(tmp_path, name):
    with pytest.raises(DatasetError, match=f"^{name}: no data root given") as e:
        load_split(name, None, "train")
    assert "accepted layouts" in str(e.value)
    with pytest.raises(DatasetError, match=f"^{name}: data root .*nowhere does not exist; accepted layouts: "):
        load_split(name, tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError) as e:
        load_split(name, tmp_path, "train")
    msg = str(e.value)
    assert msg.startswith(f"{name} not found under {tmp_path}") and "\n" not in msg
    for p in LOCATORS[name].candidates(tmp_path):
        assert str(p) in msg
    assert LOCATORS[name].layouts[0][:30] in msg
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_split(name, tmp_path, "dev")


def test_corrupt_image_names_the_file(tmp_path):
    names = make_cub(tmp_path)
    bad = tmp_path / "CUB_200_2011" / "images" / names[0] / f"{names[0]}_1.jpg"
    bad.write_bytes(b"not a jpeg at all")
    data = load_split("cub", tmp_path, "train")
    data.images(0, [0])  # the others are fine
    with pytest.raises(DatasetError, match=f"cannot read image {bad}") as e:
        data.images(0, [1])
    assert "\n" not in str(e.value)
    make_omniglot(tmp_path / "o")
    (next((tmp_path / "o" / "images_evaluation" / "Alpha_C" / "character02").iterdir())).write_bytes(b"\x89PNG junk")
    with pytest.raises(DatasetError, match=r"cannot read image .*Alpha_C/character02/"):
        load_split("omniglot", tmp_path / "o", "train", split_file=write_toml(tmp_path / "s.toml", **OMNI_SPLIT))


def test_corrupt_tiered_png_names_the_item(tmp_path):
    write_tiered(tmp_path)
    with open(tmp_path / "val_images_png.pkl", "rb") as f:
        blobs = pickle.load(f)
    blobs[4] = b"garbage"
    with open(tmp_path / "val_images_png.pkl", "wb") as f:
        pickle.dump(blobs, f)
    data = load_split("tiered_imagenet", tmp_path, "val")
    with pytest.raises(DatasetError, match=r"cannot read image .*val_images_png.pkl item 4"):
        data.images(1, [1])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_that_are_not_what_they_should_be(tmp_path):
    d = tmp_path / "mini-imagenet"
    write_mini_pickles(d)
    page = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>\n"
    (d / "mini-imagenet-cache-train.pkl").write_bytes(page)
    with pytest.raises(DatasetError) as e:
        load_split("mini_imagenet", tmp_path, "train")
    msg = str(e.value)
    assert "mini-imagenet-cache-train.pkl is not a valid miniImageNet cache pickle" in msg
    assert "HTML" in msg and "\n" not in msg and "Traceback" not in msg
    (d / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match="should hold a dict with 'image_data' and 'class_dict'"):
        load_split("mini_imagenet", tmp_path, "val")
    (d / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps({"image_data": _Evil(), "class_dict": {}}))
    with pytest.raises(DatasetError, match=r"refers to (posix|nt|os)\.system"):
        load_split("mini_imagenet", tmp_path, "test")
    (d / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps({"x": 1})[:5])
    with pytest.raises(DatasetError, match="truncated or foreign pickle"):
        load_split("mini_imagenet", tmp_path, "test")
    write_tiered(tmp_path / "t")
    (tmp_path / "t" / "train_labels.pkl").write_bytes(b"")
    with pytest.raises(DatasetError, match="train_labels.pkl is not a valid tieredImageNet labels pickle .the file "
                                           "is empty"):
        load_split("tiered_imagenet", tmp_path / "t", "train")


def test_cifar_pickle_with_wrong_content(tmp_path):
    write_cifar(tmp_path / "cifar-100-python")
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((3, 10), np.uint8), "fine_labels": [0, 1, 2]}, f)
    with pytest.raises(DatasetError, match=r"cifar_fs: .*test: 'data' should be uint8 \[N, 3072\]"):
        load_split("cifar_fs", tmp_path, "train")


# ---- innerloop data check ------------------------------------------------------------------------
def test_data_check_lists_datasets_layouts_counts_and_problems(tmp_path, capsys):
    make_omniglot(tmp_path / "omniglot")
    names = make_cub(tmp_path)
    bad = tmp_path / "CUB_200_2011" / "images" / names[2] / f"{names[2]}_0.jpg"
    bad.write_bytes(b"junk")
    make_dogs(tmp_path)
    assert main(["data", "check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    print(out)
    assert f"Image datasets under {tmp_path}:" in out
    assert f"omniglot: found in {tmp_path / 'omniglot'} (layout: image folders)" in out
    assert "val: the val split in MAML's seed-1 split is empty" in out  # 8 characters: all in train
    assert f"cub: found in {tmp_path / 'CUB_200_2011'} (layout: CUB_200_2011/images/<class>/)" in out
    assert "  train         4       12             3" in out  # cub: 4 classes, 12 images, 3 per class
    assert "train: 4 classes; the standard split has 100" in out
    assert f"train: cannot read image {bad}: not an image file PIL can identify" in out
    assert "dogs: found" in out and "  test         30       30             1" in out
    assert "mini_imagenet: not found (searched ., mini-imagenet, miniImageNet," in out
    assert "3 of 8 datasets found; 7 problems." in out
    assert not list((tmp_path / "omniglot").glob("*.npz"))  # the check writes nothing


def test_data_check_clean_dataset_exits_0(tmp_path, capsys):
    make_dogs(tmp_path, per_class=2)
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "dogs", "--all-images"]) == 0
    out = capsys.readouterr().out
    assert "dogs: found" in out and "problems: none" in out and "1 of 1 datasets found; 0 problems." in out


def test_data_check_mini_imagenet_against_ravis_lists(tmp_path, capsys):
    write_mini_pickles(tmp_path / "mini-imagenet")
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "mini_imagenet"]) == 1
    out = capsys.readouterr().out
    assert "layout: cache pickles" in out and "train: 3 classes not in the published train list" in out


def test_data_check_missing_root_is_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "check", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"innerloop: data root {tmp_path / 'nope'} does not exist (give --root PATH or set INNERLOOP_DATA)\n"
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "imagenet"]) == 2
    assert "no on-disk loader for dataset 'imagenet'" in capsys.readouterr().err


def test_data_check_default_root_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INNERLOOP_DATA", str(tmp_path))
    make_cub(tmp_path)
    assert main(["data", "check", "--dataset", "cub"]) == 1
    assert f"Image datasets under {tmp_path}:" in capsys.readouterr().out


def test_dataset_modules_are_importable_by_name():
    assert {m.NAME for m in (omniglot, mini_imagenet, tiered_imagenet, cub, aircraft, dogs)} <= set(DATASETS)


def test_cross_domain_test_set_takes_its_own_split_file(tmp_path):
    from innerloop.experiments.build import build_family
    from innerloop.experiments.config import ConfigError, load

    make_omniglot(tmp_path / "omniglot")
    sf = write_toml(tmp_path / "split.toml", **OMNI_SPLIT)
    cfg = load(None, ["task.name=images", "task.dataset=glyphs", "task.test_dataset=omniglot",
                      f"task.test_root={tmp_path}", f"task.test_split_file={sf}", "task.n_way=2"])
    family = build_family(cfg)
    assert family.splits["test"].classes == OMNI_SPLIT["test"] and family.splits["val"].classes == OMNI_SPLIT["val"]
    assert len(family.splits["train"].classes) > 100  # the glyphs' own training classes
    with pytest.raises(ConfigError, match="test_split_file.*task.split_file"):
        build_family(load(None, ["task.name=images", f"task.test_split_file={sf}"]))
