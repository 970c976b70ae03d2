"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015): 1623 handwritten characters of 50 alphabets, 20
drawings each, read from the files Lake distributes (never downloaded).

Images are decoded to grayscale, resized 105 -> 28 with Lanczos and inverted (stored as ``255 - x``, so
strokes are bright on black), one channel, ``uint8``, held in memory. A class is a character, named
``"<alphabet>/<character>"`` (e.g. ``"Latin/character01"``) from both ``images_background`` (30
alphabets, 964 characters) and ``images_evaluation`` (20 alphabets, 659 characters).

Split rules (keyword ``split_rule``; a ``split_file`` overrides both):

* ``"maml"`` (default) -- MAML's seed-1 shuffle, 1100 train / 100 val / 423 test. MAML's own code
  (cbfinn/maml, ``data_generator.py``) shuffles the characters with ``random.seed(1);
  random.shuffle(...)`` in ``os.listdir`` order, which depends on the file system, so its exact
  membership cannot be reproduced. Here the 1623 names are first **sorted** (Python string order) and
  then shuffled with Python's ``random.Random(1).shuffle`` -- the same generator and algorithm as MAML,
  on a fixed order; the first 1100 are train, the next 100 val, the remaining 423 test.
* ``"vinyals"`` -- Vinyals et al.'s 1028 / 172 / 423 split by alphabet (``splits/omniglot_vinyals.toml``).
* ``"background"`` -- when only ``images_background`` is present (the 964 characters of its 30
  alphabets; many copies of Omniglot hold just that part): the same seeded shuffle as ``"maml"`` on
  those names, 664 train / 100 val / 200 test. It is the default for that layout, and the only rule
  besides a split file that fits it (MAML's and Vinyals' splits need both parts).

Decoding all 32460 images takes a few seconds; the result is cached in the dataset folder as
``innerloop-omniglot-28.npz`` when that folder is writable (written to a temporary file and renamed,
so no partial cache is ever left). The cache records a fingerprint of the source files (names, sizes
and modification times, or the zip members' CRCs) and is rebuilt when they change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from innerloop.data.images._common import (
    Found,
    Locator,
    builtin_table,
    check_split,
    decode,
    fail,
    image_files,
    read_split_file,
    register_locator,
    split_classes,
    subdirs_of,
)
from innerloop.data.images.base import TensorSplit, register_dataset

NAME = "omniglot"
SIZE = 28
PARTS = ("images_background", "images_evaluation")
MAML_SIZES = (1100, 100)  # train, val; test is every remaining character (423 of 1623)
BACKGROUND_SIZES = (664, 100)  # train, val; test is the remaining 200 of the 964 background characters
BACKGROUND_CHARACTERS = 964  # in images_background (30 alphabets)
BACKGROUND_ONLY = " (images_background only)"
CACHE_NAME = "innerloop-omniglot-28.npz"
ZIP_MD5 = {"images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
           "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811"}

LAYOUTS = (
    "folders images_background/<alphabet>/<character>/*.png + images_evaluation/ (the unzipped python/ "
    "files of github.com/brendenlake/omniglot), directly under the root or in omniglot/, omniglot/python/",
    "torchvision's omniglot-py/images_background/ + omniglot-py/images_evaluation/",
    "the two zips images_background.zip (md5 68d2efa1b9178cc56df9314c21c6e718) + images_evaluation.zip "
    "(md5 6b91aef0f799c5bb55b94e3f2daec811), read in place",
    "images_background alone (folder or zip) in any of the places above: its 964 characters, split 664 / 100 / 200 "
    "by the 'background' rule (or a split file)",
)


def _probe(p: Path) -> str | None:
    folders = "omniglot-py folders (torchvision)" if p.name == "omniglot-py" else "image folders"
    if all((p / part).is_dir() for part in PARTS):
        return folders
    if all((p / f"{part}.zip").is_file() for part in PARTS):
        return "zip archives"
    if (p / PARTS[0]).is_dir():
        return folders + BACKGROUND_ONLY
    if (p / f"{PARTS[0]}.zip").is_file():
        return "zip archives" + BACKGROUND_ONLY
    return None


def _parts(layout: str) -> tuple[str, ...]:
    return PARTS[:1] if layout.endswith(BACKGROUND_ONLY) else PARTS


def expected_classes(layout: str) -> dict[str, int]:
    """Classes per split of the default split of ``layout``: MAML's 1100 / 100 / 423, or the documented
    background-only 664 / 100 / 200 when only images_background is there (what ``data check`` expects)."""
    if layout.endswith(BACKGROUND_ONLY):
        n_train, n_val = BACKGROUND_SIZES
        return {"train": n_train, "val": n_val, "test": BACKGROUND_CHARACTERS - n_train - n_val}
    return {"train": 1100, "val": 100, "test": 423}


LOCATOR = register_locator(Locator(
    NAME, ("omniglot", "omniglot-py", "Omniglot", "omniglot/python", "omniglot-master/python", "python"),
    _probe, LAYOUTS, expected={"train": 1100, "val": 100, "test": 423}, checksums=ZIP_MD5,
    check_options={"cache": False}, expected_for=expected_classes))


# ---- split rules -----------------------------------------------------------------------------
def maml_split(names: Sequence[str], sizes: tuple[int, int] | None = None) -> dict[str, list[str]]:
    """MAML's seed-1 rule on a fixed order: sort, ``random.Random(1).shuffle``, cut 1100 / 100 / rest
    (``sizes``: train and val; the background rule cuts 664 / 100 / rest)."""
    order = sorted(names)
    random.Random(1).shuffle(order)
    n_train, n_val = sizes or MAML_SIZES
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def vinyals_split(names: Sequence[str]) -> dict[str, list[str]]:
    """Vinyals' split: val and test are the alphabets (or single characters) of
    ``splits/omniglot_vinyals.toml``; train is everything else."""
    table = builtin_table("omniglot_vinyals")
    present = set(names)
    alphabets = {n.split("/", 1)[0] for n in names}
    out: dict[str, list[str]] = {}
    for split in ("val", "test"):
        chars: list[str] = []
        for entry in table[split]:
            if "/" in entry:
                if entry not in present:
                    raise fail(f"{NAME}: character {entry!r} of Vinyals' {split} split not found in the data")
                chars.append(entry)
            elif entry in alphabets:
                chars.extend(n for n in sorted(names) if n.split("/", 1)[0] == entry)
            else:
                raise fail(f"{NAME}: alphabet {entry!r} of Vinyals' {split} split not found in the data")
        out[split] = chars
    taken = set(out["val"]) | set(out["test"])
    out["train"] = [n for n in sorted(names) if n not in taken]
    return out


# ---- reading the files -----------------------------------------------------------------------
def _list_folders(p: Path, parts: tuple[str, ...] = PARTS) -> tuple[dict[str, list], str]:
    chars: dict[str, list] = {}
    h = hashlib.sha256()
    for part in parts:
        for alphabet in subdirs_of(p / part):
            for char in subdirs_of(alphabet):
                name = f"{alphabet.name}/{char.name}"
                if name in chars:
                    raise fail(f"{NAME}: character {name} appears in both {PARTS[0]} and {PARTS[1]} under {p}")
                files = image_files(char)
                chars[name] = files
                for f in files:
                    st = f.stat()
                    h.update(f"{name}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return chars, h.hexdigest()


def _list_zips(p: Path, parts: tuple[str, ...] = PARTS) -> tuple[dict[str, list], str]:
    chars: dict[str, list] = {}
    h = hashlib.sha256()
    for part in parts:
        zpath = p / f"{part}.zip"
        try:
            with zipfile.ZipFile(zpath) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise fail(f"{NAME}: {zpath} is not a readable zip archive ({e})") from None
        for info in sorted(infos, key=lambda i: i.filename):
            parts = [s for s in info.filename.split("/") if s]
            if info.is_dir() or not parts or parts[0].startswith(("__MACOSX", ".")):
                continue
            if parts[0] == part:
                parts = parts[1:]
            if len(parts) != 3 or not parts[2].lower().endswith(".png") or parts[2].startswith("."):
                continue
            name = f"{parts[0]}/{parts[1]}"
            chars.setdefault(name, []).append((zpath, info.filename))
            h.update(f"{part}:{info.filename}:{info.file_size}:{info.CRC}\n".encode())
    return chars, h.hexdigest()


def _decode_all(chars: dict[str, list]) -> list[np.ndarray]:
    """Every character's drawings as ``uint8 [n, 28, 28]``, inverted."""
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        out = []
        for files in chars.values():
            imgs = []
            for src in files:
                if isinstance(src, tuple):
                    zpath, member = src
                    if zpath not in zips:
                        zips[zpath] = zipfile.ZipFile(zpath)
                    try:
                        blob = zips[zpath].read(member)
                    except (zipfile.BadZipFile, OSError, KeyError) as e:
                        raise fail(f"{NAME}: cannot read {member} in {zpath} ({e})") from None
                    a = decode(blob, f"{zpath}:{member}", size=SIZE, mode="L")
                else:
                    a = decode(src, str(src), size=SIZE, mode="L")
                imgs.append(255 - a)
            out.append(np.stack(imgs) if imgs else np.zeros((0, SIZE, SIZE), np.uint8))
        return out
    finally:
        for zf in zips.values():
            zf.close()


def _read_cache(path: Path, key: str) -> tuple[list[str], list[np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            names, counts, images = [str(n) for n in z["names"]], z["counts"], z["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if len(names) != len(counts) or int(counts.sum()) != len(images):
        return None
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return names, [images[bounds[i]:bounds[i + 1]] for i in range(len(names))]


def _write_cache(path: Path, key: str, names: list[str], arrays: list[np.ndarray]) -> bool:
    """Write atomically (temporary file in the same folder, then rename); False if not writable."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".innerloop-omniglot-", suffix=".tmp", dir=path.parent)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), names=np.array(names), counts=np.array([len(a) for a in arrays]),
                     images=np.concatenate(arrays) if arrays else np.zeros((0, SIZE, SIZE), np.uint8))
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_MEMO: dict[tuple[str, str], tuple[list[str], list[np.ndarray]]] = {}


def characters(found: Found, cache: bool = True) -> tuple[list[str], list[np.ndarray]]:
    """All character names (sorted) and their decoded drawings, from the cache when it is current."""
    parts = _parts(found.layout)
    lister = _list_zips if found.layout.startswith("zip archives") else _list_folders
    chars, key = lister(found.path, parts)
    if not chars:
        raise fail(f"{NAME}: no character folders found in {found.path} ({found.layout})")
    memo_key = (str(found.path), key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    cache_path = found.path / CACHE_NAME
    got = _read_cache(cache_path, key) if cache else None
    if got is None:
        names = sorted(chars)
        arrays = _decode_all({n: chars[n] for n in names})
        if cache:
            _write_cache(cache_path, key, names, arrays)
        got = (names, arrays)
    _MEMO.clear()  # keep one decoded dataset per process
    _MEMO[memo_key] = got
    return got


@register_dataset(NAME, layouts="\n".join(LAYOUTS), rotate=True)
def load(root, split: str, *, split_file=None, split_rule: str | None = None, cache: bool = True) -> TensorSplit:
    """Omniglot ``split`` (train/val/test) under ``root``: 28x28 inverted, 1 channel, in memory.
    ``split_rule`` defaults to ``"maml"``, or ``"background"`` when only images_background is there."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    background_only = found.layout.endswith(BACKGROUND_ONLY)
    names, arrays = characters(found, cache)
    rule = split_rule or ("background" if background_only else "maml")
    if split_file is None and background_only and rule != "background":
        raise fail(f"{NAME}: only images_background was found under {found.path} (964 characters); split_rule "
                   f"{rule!r} needs images_evaluation too: use split_rule=background (664 / 100 / 200) or a split_file")
    if split_file is not None:
        table, source = read_split_file(split_file, NAME), f"split file {split_file}"
    elif rule == "background":
        table, source = maml_split(names, BACKGROUND_SIZES), "the background-only seed-1 split"
    elif rule == "maml":
        table, source = maml_split(names), "MAML's seed-1 split"
    elif rule == "vinyals":
        table, source = vinyals_split(names), "Vinyals' split"
    else:
        raise fail(f"{NAME}: unknown split_rule {rule!r} (rules: maml, vinyals, background)")
    classes = split_classes(NAME, split, names, table, source)
    index = {n: i for i, n in enumerate(names)}
    data = [torch.from_numpy(arrays[index[c]]).unsqueeze(1) for c in classes]
    return TensorSplit(NAME, split, classes, data)
