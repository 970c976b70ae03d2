"""miniImageNet (Vinyals et al., 2016; the Ravi & Larochelle 2017 split): 100 ImageNet classes x 600
images, 84x84 RGB, 64 train / 16 val / 20 test classes. Classes are named by ImageNet wnid.

Three distributed layouts are read (never downloaded):

* the per-split cache pickles ``mini-imagenet-cache-{train,val,test}.pkl`` (``-validation.pkl`` is
  accepted for val): a dict with ``image_data`` (``uint8 [N, 84, 84, 3]``) and ``class_dict``
  (wnid -> list of row indices). Held in memory as one array per split (no copy per class).
* Ravi & Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv`` (``filename,label``) with the images in
  ``images/`` (``images/<filename>`` or ``images/<label>/<filename>``); decoded lazily, resized to 84x84.
* per-split class folders ``train/<wnid>/*.jpg``, ``val/`` (or ``validation/``), ``test/``; decoded
  lazily, resized to 84x84.

Each layout carries its own split; ``split_file`` picks classes from all three splits instead. The
reference class lists (``splits/mini_imagenet_ravi.toml``) are used by ``innerloop data check``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from innerloop.data.images._common import (
    SPLITS,
    ArraySplit,
    DecodeFile,
    Found,
    Locator,
    builtin_split,
    check_split,
    fail,
    image_files,
    load_pickle,
    read_split_file,
    register_locator,
    split_classes,
    subdirs_of,
)
from innerloop.data.images.base import DatasetError, FileSplit, SplitData, register_dataset

NAME = "mini_imagenet"
SIZE = 84
PICKLES = {"train": ("mini-imagenet-cache-train.pkl",),
           "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
           "test": ("mini-imagenet-cache-test.pkl",)}
FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
WNID = re.compile(r"^n\d{8}$")

LAYOUTS = (
    "cache pickles mini-imagenet-cache-train.pkl / -val.pkl (or -validation.pkl) / -test.pkl "
    "(dict: image_data uint8 [N,84,84,3], class_dict wnid -> indices)",
    "Ravi's train.csv / val.csv / test.csv (filename,label) + images/ folder",
    "class folders train/<wnid>/*.jpg, val/ (or validation/), test/",
    "under the root or in mini-imagenet/, miniImageNet/, miniimagenet/, mini_imagenet/ (no published checksums)",
)


def _first(p: Path, names: tuple[str, ...], kind: str = "file") -> Path | None:
    for n in names:
        q = p / n
        if (q.is_file() if kind == "file" else q.is_dir()):
            return q
    return None


def _probe(p: Path) -> str | None:
    if any(_first(p, names) for names in PICKLES.values()):
        return "cache pickles"
    if (p / "train.csv").is_file() and (p / "images").is_dir():
        return "Ravi CSV + images/"
    train = p / "train"
    if train.is_dir() and any(WNID.match(d.name) for d in subdirs_of(train)):
        return "class folders"
    return None


def reference_split() -> dict[str, list[str]]:
    """Ravi & Larochelle's class lists (wnids)."""
    return builtin_split("mini_imagenet_ravi", NAME)


LOCATOR = register_locator(Locator(
    NAME, ("mini-imagenet", "miniImageNet", "miniimagenet", "mini_imagenet", "MiniImagenet", "mini-ImageNet"),
    _probe, LAYOUTS, expected={"train": 64, "val": 16, "test": 20}, reference=reference_split))


# ---- pickles ---------------------------------------------------------------------------------
def _read_cache_pickle(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    obj = load_pickle(path, NAME, "miniImageNet cache")
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise fail(f"{NAME}: {path} should hold a dict with 'image_data' and 'class_dict' (found: {keys})")
    data, class_dict = obj["image_data"], obj["class_dict"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise fail(f"{NAME}: {path}: image_data should be uint8 [N, H, W, 3], found {what}")
    if not isinstance(class_dict, dict):
        raise fail(f"{NAME}: {path}: class_dict should be a dict (class -> indices)")
    out = {}
    for cls, idx in class_dict.items():
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(data)):
            raise fail(f"{NAME}: {path}: indices of class {cls} outside image_data's {len(data)} rows")
        out[str(cls)] = idx
    return data, out


def _pickle_split(found: Found, split: str, classes_for: dict[str, list[str]] | None, source: str) -> SplitData:
    if classes_for is None:  # the file's own split
        path = _first(found.path, PICKLES[split])
        if path is None:
            raise fail(f"{NAME}: {' or '.join(PICKLES[split])} not found in {found.path}")
        data, index = _read_cache_pickle(path)
        classes = sorted(index)
        return ArraySplit(NAME, split, classes, data, [index[c] for c in classes])
    # split file: gather the wanted classes from every split's pickle
    wanted = set(classes_for.get(split, ()))
    parts, where, available = [], {}, []
    for s in SPLITS:
        path = _first(found.path, PICKLES[s])
        if path is None:
            continue
        data, index = _read_cache_pickle(path)
        available += index
        for c in sorted(wanted & set(index) - set(where)):
            where[c] = len(parts)
            parts.append(data[index[c]])
    classes = split_classes(NAME, split, available, classes_for, source)
    rows, start, idx = [], 0, []
    for c in classes:
        block = parts[where[c]]
        rows.append(block)
        idx.append(np.arange(start, start + len(block)))
        start += len(block)
    return ArraySplit(NAME, split, classes, np.concatenate(rows), idx)


# ---- CSV + images/ and class folders ---------------------------------------------------------
def _csv_catalog(found: Found, split: str) -> dict[str, list[Path]]:
    path = found.path / f"{split}.csv"
    if not path.is_file():
        raise fail(f"{NAME}: {path} not found (Ravi CSV layout)")
    images = found.path / "images"
    out: dict[str, list[Path]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise fail(f"{NAME}: cannot read {path} ({e})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["filename", "label"]:
        rows = rows[1:]
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 2:
            raise fail(f"{NAME}: {path} line {line}: expected 'filename,label', got {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        file = images / name
        if not file.is_file():
            alt = images / label / name
            if not alt.is_file():
                raise fail(f"{NAME}: image {name} listed in {path} not found in {images} (nor in {images / label})")
            file = alt
        out.setdefault(label, []).append(file)
    return out


def _folder_catalog(found: Found, split: str) -> dict[str, list[Path]]:
    folder = _first(found.path, FOLDERS[split], kind="dir")
    if folder is None:
        raise fail(f"{NAME}: no {' or '.join(FOLDERS[split])}/ folder in {found.path} (class-folder layout)")
    return {d.name: image_files(d) for d in subdirs_of(folder)}


def _file_split(found: Found, split: str, classes_for: dict[str, list[str]] | None, source: str) -> SplitData:
    catalog = _csv_catalog if found.layout.startswith("Ravi") else _folder_catalog
    if classes_for is None:
        files = catalog(found, split)
        classes = sorted(files)
    else:
        files = {}
        for s in SPLITS:
            try:
                part = catalog(found, s)
            except DatasetError:  # a missing split is fine when its classes are not wanted
                if s == split:
                    raise
                continue
            for c, f in part.items():
                files.setdefault(c, f)
        classes = split_classes(NAME, split, list(files), classes_for, source)
    if not classes:
        raise fail(f"{NAME}: no classes in the {split} split under {found.path}")
    return FileSplit(NAME, split, classes, [files[c] for c in classes], DecodeFile(SIZE), (3, SIZE, SIZE))


@register_dataset(NAME, layouts="\n".join(LAYOUTS))
def load(root, split: str, *, split_file=None) -> SplitData:
    """miniImageNet ``split`` under ``root`` (84x84 RGB)."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    table = read_split_file(split_file, NAME) if split_file is not None else None
    source = f"split file {split_file}"
    if found.layout == "cache pickles":
        return _pickle_split(found, split, table, source)
    return _file_split(found, split, table, source)
