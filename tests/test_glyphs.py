"""Glyphs, the embedded benchmark: the packaged asset (hash, counts, split, no near-duplicates) and the
instances made from it at load time (shapes, polarity, determinism per seed, episodes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from innerloop.data.episodes import FewShotImages
from innerloop.data.images import DATASETS, DatasetError, load_split
from innerloop.data.images import glyphs as G

# pinned: rebuilding the asset (tools/build_glyphs.py) must be a deliberate change of this line
ASSET_SHA256 = "01a5993d2b6b0a266e7d07863ae34251936133a9764e28de26e96e6cdd7f9586"


@pytest.fixture(scope="module")
def splits():
    return {s: G.load(None, s) for s in G.SPLITS}


def test_asset_hash_matches_manifest_and_pin():
    digest = hashlib.sha256(G.ASSET.read_bytes()).hexdigest()
    m = G.manifest()
    assert digest == m["sha256"] == ASSET_SHA256
    assert G.ASSET.stat().st_size == m["bytes"] <= 3_000_000


def test_asset_contents_match_manifest():
    a, m = G.asset(), G.manifest()
    n = len(a.codepoints)
    assert len(a.alphabets) >= 50 and n >= 1500
    assert m["counts"]["alphabets"] == len(a.alphabets) and m["counts"]["characters"] == n
    assert [x["name"] for x in m["alphabets"]] == a.alphabets
    assert [x["split"] for x in m["alphabets"]] == a.alphabet_split
    listed = [(x["name"], c[0], len(c[2])) for x in m["alphabets"] for c in x["characters"]]
    faces = np.diff(a.offsets).tolist()
    stored = [(a.alphabets[al], f"U+{cp:04X}", k)
              for al, cp, k in zip(a.alphabet.tolist(), a.codepoints.tolist(), faces, strict=True)]
    assert listed == stored
    assert len(set(a.names)) == n
    for x in m["alphabets"]:
        assert 14 <= len(x["characters"]) <= 30
    # fonts and their licences are recorded; placeholder fonts are not among them
    packages = {f["package"] for f in m["fonts"]}
    assert packages == {"fonts-noto-core", "fonts-dejavu-core"}
    assert all(f["licence"] and len(f["sha256"]) == 64 for f in m["fonts"])
    assert "Open Font License" in m["licences"]["fonts-noto-core"]
    assert "Bitstream Vera" in m["licences"]["fonts-dejavu-core"]
    assert all(v for v in m["build"]["font_packages"].values())
    assert not any("last resort" in f["family"].lower() for f in m["fonts"])


def test_stored_renderings_are_centred_with_a_fixed_extent():
    a = G.asset()
    assert a.images.dtype == np.uint8 and a.images.shape[1:] == (32, 32)
    assert a.offsets[0] == 0 and a.offsets[-1] == len(a.images) and (np.diff(a.offsets) >= 1).all()
    assert (np.diff(a.offsets) <= 4).all()
    ink = a.images > 0
    extents = []
    for mask in (ink.any(axis=2), ink.any(axis=1)):  # rows, columns holding ink
        first = mask.argmax(axis=1)
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        # centred: the ink's margins differ by at most one pixel (the box filter's rounding)
        assert (np.abs(first + last - 31) <= 1).all()
        extents.append(last - first + 1)
    assert (np.maximum(*extents) == 26).all()  # the longest side of the ink is 26 px


def test_no_near_duplicates_in_the_asset():
    a = G.asset()
    canonical = a.images[a.offsets[:-1]]
    assert G.near_duplicates(canonical) == []
    # the criterion does catch a glyph against itself moved by a pixel or slanted a little
    moved = np.roll(canonical[:1], 1, axis=2)
    turned = (G.rotate(canonical[1:2], 6.0) * 255).round().astype(np.uint8)
    pairs = G.near_duplicates(np.concatenate([canonical[:2], moved, turned]))
    assert (0, 2) in [(i, j) for i, j, _ in pairs] and (1, 3) in [(i, j) for i, j, _ in pairs]


def test_split_is_by_alphabet_and_covers_everything(splits):
    alphabets = {s: {c.split("/")[0] for c in d.classes} for s, d in splits.items()}
    assert not alphabets["train"] & alphabets["val"] and not alphabets["train"] & alphabets["test"]
    assert not alphabets["val"] & alphabets["test"]
    assert sum(len(d.classes) for d in splits.values()) == len(G.asset().codepoints)
    counts = G.manifest()["counts"]["splits"]
    for s, d in splits.items():
        assert len(d.classes) == counts[s]["characters"] and len(alphabets[s]) == counts[s]["alphabets"]
    assert len(splits["train"].classes) > len(splits["test"].classes) > len(splits["val"].classes) >= 100


def test_instances_shape_polarity_and_determinism(splits):
    val = splits["val"]
    assert val.image_shape == (1, 28, 28)
    assert all(t.dtype == torch.uint8 and t.shape == (20, 1, 28, 28) for t in val.data)
    x = torch.stack(val.data).float()
    assert x.max() == 255 and x.mean() < 0.25 * 255  # white strokes on a black ground
    assert (x[..., 0, :] == 0).float().mean() > 0.9  # the border rows are background
    again = G.load(None, "val")
    assert again.classes == val.classes and all(torch.equal(p, q) for p, q in zip(again.data, val.data, strict=True))
    other = G.load(None, "val", seed=1)
    assert not any(torch.equal(p, q) for p, q in zip(other.data, val.data, strict=True))
    # the 20 instances of a character are not all alike
    assert all(len({hash(t[i].numpy().tobytes()) for i in range(20)}) == 20 for t in val.data[:20])


def test_a_characters_instances_depend_only_on_seed_and_character():
    a = G.asset()
    train = a.split_indices("train")
    both = G.augment(a, [train[3], train[7]], seed=5, instances=6)
    alone = G.augment(a, [train[7]], seed=5, instances=6)
    assert both[1].shape == (6, 1, 28, 28) and torch.equal(both[1], alone[0])
    assert torch.equal(G.augment(a, train[:40], 0, 20)[10], G.augment(a, train[:40], 0, 20)[10])


@pytest.mark.parametrize("k_shot", [1, 5])
def test_episodes_are_drawn_with_few_shot_images(splits, k_shot):
    fam = FewShotImages(splits, 5, k_shot, 15, rotate=DATASETS["glyphs"].rotate)
    for split in ("train", "test"):
        t = fam.for_split(split).sample(3, torch.Generator().manual_seed(0))
        assert t.support_x.shape == (3, 5 * k_shot, 1, 28, 28) and t.query_x.shape == (3, 75, 1, 28, 28)
        assert t.support_y[0].tolist() == [c for c in range(5) for _ in range(k_shot)]
        assert 0 <= t.support_x.min() and t.support_x.max() <= 1


def test_registry_split_file_and_bad_input(tmp_path):
    assert DATASETS["glyphs"].rotate is False
    names = G.asset().names
    test_names = [n for n, al in zip(names, G.asset().alphabet.tolist(), strict=True)
                  if G.asset().alphabet_split[al] == "test"]
    f = tmp_path / "split.toml"
    f.write_text(f'train = ["{names[0]}"]\nval = ["{test_names[0]}", "{test_names[1]}"]\n')
    custom = load_split("glyphs", None, "val", split_file=str(f), instances=4)
    assert custom.classes == test_names[:2] and custom.data[0].shape == (4, 1, 28, 28)
    # a character keeps its images when a split file moves it to another split
    builtin = load_split("glyphs", None, "test", instances=4)
    assert torch.equal(custom.data[1], builtin.data[builtin.classes.index(test_names[1])])
    f.write_text('val = ["Latin/U+0000"]\n')
    with pytest.raises(DatasetError, match="glyphs.*Latin/U\\+0000"):
        load_split("glyphs", None, "val", split_file=str(f))
    with pytest.raises(DatasetError, match="glyphs: unknown split 'dev'"):
        load_split("glyphs", None, "dev")
    with pytest.raises(DatasetError, match="instances must be at least 1"):
        load_split("glyphs", None, "val", instances=0)
