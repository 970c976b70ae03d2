"""tieredImageNet (Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018):
608 ImageNet classes in 34 categories, split by category into 351 train / 97 val / 160 test classes,
84x84 RGB. Classes are named by ImageNet wnid when the label pickle carries the names.

Layout (Ren et al.'s distribution, never downloaded): per split ``<split>_images_png.pkl`` (a list of
PNG-encoded images: ``bytes``, ``uint8`` arrays from ``cv2.imencode``, or Python 2 strings) and
``<split>_labels.pkl`` (a dict). Label variants handled: the class index under ``label_specific``
(also ``labels``, ``label``, ``targets``) with names under ``label_specific_str`` (also
``label_str``, ``class_names``, ``names``, ``wnids``); a bare list of labels; names missing
(classes are then ``class000``, ...). An images pickle holding an already decoded ``uint8 [N, H, W, 3]``
array is read as is.

The split is the one of the files (the class lists are the data's own: 351/97/160 is checked by
``innerloop data check``); ``split_file`` picks classes from all three splits instead. The PNG bytes
stay in memory and are decoded on demand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from innerloop.data.images._common import (
    SPLITS,
    ArraySplit,
    EncodedSplit,
    Found,
    Locator,
    check_split,
    fail,
    load_pickle,
    read_split_file,
    register_locator,
    split_classes,
)
from innerloop.data.images.base import DatasetError, SplitData, register_dataset

NAME = "tiered_imagenet"
SIZE = 84
LABEL_KEYS = ("label_specific", "labels", "label", "targets", "y")
NAME_KEYS = ("label_specific_str", "label_str", "class_names", "names", "wnids", "classes")

LAYOUTS = (
    "Ren et al.'s pickles train_images_png.pkl + train_labels.pkl, val_images_png.pkl + val_labels.pkl, "
    "test_images_png.pkl + test_labels.pkl (labels: dict with label_specific and label_specific_str, or the "
    "common variants), under the root or in tiered-imagenet/, tieredImageNet/, tiered_imagenet/ "
    "(no published checksums)",
)


def _probe(p: Path) -> str | None:
    if any((p / f"{s}_images_png.pkl").is_file() for s in SPLITS):
        return "Ren et al. pickles"
    return None


LOCATOR = register_locator(Locator(
    NAME, ("tiered-imagenet", "tieredImageNet", "tiered_imagenet", "tieredimagenet", "tiered-ImageNet"),
    _probe, LAYOUTS, expected={"train": 351, "val": 97, "test": 160}))


def _text(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return str(x)


def parse_labels(obj, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Per-image integer class labels and, when present, the class names indexed by label."""
    names = None
    if isinstance(obj, dict):
        key = next((k for k in LABEL_KEYS if k in obj), None)
        if key is None:
            raise fail(f"{NAME}: {path} has none of the label keys {', '.join(LABEL_KEYS)} "
                       f"(found: {', '.join(map(str, obj))})")
        labels = obj[key]
        name_key = next((k for k in NAME_KEYS if k in obj), None)
        if name_key is not None:
            names = [_text(n) for n in obj[name_key]]
    elif isinstance(obj, list | tuple | np.ndarray):
        labels = obj
    else:
        raise fail(f"{NAME}: {path} should hold a dict of labels, found {type(obj).__name__}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise fail(f"{NAME}: {path}: the labels are not integers") from None
    if labels.size and labels.min() < 0:
        raise fail(f"{NAME}: {path}: negative class label {int(labels.min())}")
    if names is not None and labels.size and labels.max() >= len(names):
        raise fail(f"{NAME}: {path}: label {int(labels.max())} but only {len(names)} class names")
    return labels, names


def _read_split(found: Found, split: str):
    """(classes, images, per-class indices, source) of one split's pickles."""
    ipath, lpath = found.path / f"{split}_images_png.pkl", found.path / f"{split}_labels.pkl"
    for p in (ipath, lpath):
        if not p.is_file():
            raise fail(f"{NAME}: {p} not found")
    labels, names = parse_labels(load_pickle(lpath, NAME, "tieredImageNet labels"), lpath)
    images = load_pickle(ipath, NAME, "tieredImageNet images")
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        pass  # already decoded
    elif (isinstance(images, np.ndarray) and images.dtype == object) or isinstance(images, list | tuple):
        images = list(images)
    else:
        what = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise fail(f"{NAME}: {ipath} should hold a list of PNG-encoded images, found {what}")
    if len(images) != len(labels):
        raise fail(f"{NAME}: {ipath} holds {len(images)} images but {lpath} {len(labels)} labels")
    ks = np.unique(labels)
    classes = [names[k] if names is not None else f"class{k:03d}" for k in ks]
    if len(set(classes)) != len(classes):
        raise fail(f"{NAME}: {lpath}: two labels share a class name")
    indices = [np.flatnonzero(labels == k) for k in ks]
    return classes, images, indices, ipath


def _make(split: str, classes, images, indices, source) -> SplitData:
    if isinstance(images, np.ndarray):
        return ArraySplit(NAME, split, classes, images, indices)
    return EncodedSplit(NAME, split, classes, images, indices, SIZE, str(source))


@register_dataset(NAME, layouts="\n".join(LAYOUTS))
def load(root, split: str, *, split_file=None) -> SplitData:
    """tieredImageNet ``split`` under ``root`` (84x84 RGB, decoded on demand)."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    if split_file is None:
        return _make(split, *_read_split(found, split))
    table = read_split_file(split_file, NAME)
    wanted = set(table.get(split, ()))
    available, chosen = [], {}
    for s in SPLITS:
        try:
            classes, images, indices, source = _read_split(found, s)
        except DatasetError:
            if s == split:
                raise
            continue
        available += classes
        for c, idx in zip(classes, indices, strict=True):
            if c in wanted and c not in chosen:
                chosen[c] = (images, idx, source)
    classes = split_classes(NAME, split, available, table, f"split file {split_file}")
    # one flat list of the chosen classes' images (decoded arrays or encoded bytes, not mixed)
    decoded = {isinstance(chosen[c][0], np.ndarray) for c in classes}
    if decoded == {True, False}:
        raise fail(f"{NAME}: the split file mixes classes from decoded-array and PNG pickles")
    if decoded == {True}:
        arr = np.concatenate([np.asarray(chosen[c][0])[chosen[c][1]] for c in classes])
        bounds = np.cumsum([0] + [len(chosen[c][1]) for c in classes])
        return ArraySplit(NAME, split, classes, arr, [np.arange(bounds[i], bounds[i + 1]) for i in range(len(classes))])
    blobs, idx = [], []
    for c in classes:
        images, rows, _ = chosen[c]
        idx.append(np.arange(len(blobs), len(blobs) + len(rows)))
        blobs.extend(images[int(r)] for r in rows)
    return EncodedSplit(NAME, split, classes, blobs, idx, SIZE, f"{found.path} ({split} of split file {split_file})")
