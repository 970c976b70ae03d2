"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (Krizhevsky, 2009; 100 fine classes in 20
superclasses). The training and test sets are merged, so every class has 600 images (500 + 100, in
that order), 32x32 RGB, held in memory. Classes are CIFAR-100's fine label names (e.g. ``"apple"``).

* ``cifar_fs`` -- Bertinetto et al. (ICLR 2019), 64 / 16 / 20 classes (``splits/cifar_fs_bertinetto.toml``).
* ``fc100`` -- Oreshkin et al. (NeurIPS 2018), split by superclass: 12 / 4 / 4 superclasses = 60 / 20 / 20
  classes (``splits/fc100_oreshkin.toml``).

Layouts (never downloaded):

* CIFAR-100 python pickles ``cifar-100-python/train``, ``test`` and ``meta`` (or those three files
  directly in the folder). Published md5: train 16019d7e3df5f24257cddd939b257f8d,
  test f0ef6b0ae62326f3e7ffdfab6717acfc, meta 7973b15100ade9c7d40fb424638fde48 (archive
  cifar-100-python.tar.gz eb9058c3a382ffc7106e4002c42a8d85).
* class folders ``data/<fine class>/*.png`` (the CIFAR-FS distribution) with optional split text files
  (one class per line) ``splits/bertinetto/{train,val,test}.txt`` for CIFAR-FS or
  ``splits/fc100/{train,val,test}.txt`` for FC100; when present they replace the built-in lists.

For FC100 any class list (built-in, split text file or ``split_file``) may name superclasses; each
expands to its five fine classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from innerloop.data.images._common import (
    SPLITS,
    Found,
    Locator,
    builtin_split,
    builtin_table,
    check_split,
    decode,
    fail,
    image_files,
    load_pickle,
    read_split_file,
    register_locator,
    split_classes,
    subdirs_of,
)
from innerloop.data.images.base import TensorSplit, register_dataset

SIZE = 32
MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
       "meta": "7973b15100ade9c7d40fb424638fde48"}


def superclasses() -> dict[str, list[str]]:
    """CIFAR-100's superclass -> fine classes (from ``splits/fc100_oreshkin.toml``)."""
    return {k: list(v) for k, v in builtin_table("fc100_oreshkin")["superclasses"].items()}


def fine_names() -> list[str]:
    """CIFAR-100's fine label names in label order (alphabetical, as in ``meta``)."""
    return sorted(n for v in superclasses().values() for n in v)


def _pickle_dir(p: Path) -> Path | None:
    for d in (p / "cifar-100-python", p):
        if (d / "train").is_file() and (d / "test").is_file():
            return d
    return None


def _probe(p: Path) -> str | None:
    if _pickle_dir(p) is not None:
        return "CIFAR-100 python pickles"
    data = p / "data"
    if data.is_dir():
        known = set(fine_names())
        if any(d.name in known for d in subdirs_of(data)):
            return "class folders data/<class>/"
    return None


def _layouts(rule: str) -> tuple[str, ...]:
    return (
        "CIFAR-100 python pickles cifar-100-python/train + test + meta (md5 train "
        f"{MD5['train']}, test {MD5['test']}, meta {MD5['meta']})",
        f"class folders data/<fine class>/*.png with optional splits/{rule}/train.txt, val.txt, test.txt",
    )


_SUBDIRS = ("cifar100", "CIFAR100", "cifar-100", "CIFAR-100")
_CHECKSUMS = {f"{d}{name}": md5 for d in ("", "cifar-100-python/") for name, md5 in MD5.items()}
CIFAR_FS = register_locator(Locator(
    "cifar_fs", ("cifar-fs", "CIFAR-FS", "cifar_fs", "CIFAR_FS", *_SUBDIRS), _probe, _layouts("bertinetto"),
    expected={"train": 64, "val": 16, "test": 20}, checksums=_CHECKSUMS))
FC100 = register_locator(Locator(
    "fc100", ("fc100", "FC100", *_SUBDIRS), _probe, _layouts("fc100"), expected={"train": 60, "val": 20, "test": 20},
    checksums=_CHECKSUMS))


# ---- the pickles -----------------------------------------------------------------------------
def _part(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    obj = load_pickle(path, dataset, "CIFAR-100")
    if not isinstance(obj, dict) or "data" not in obj or "fine_labels" not in obj:
        raise fail(f"{dataset}: {path} should hold a dict with 'data' and 'fine_labels' (a CIFAR-100 python batch)")
    data = obj["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise fail(f"{dataset}: {path}: 'data' should be uint8 [N, 3072]")
    fine = np.asarray(obj["fine_labels"], dtype=np.int64)
    coarse = np.asarray(obj["coarse_labels"], dtype=np.int64) if "coarse_labels" in obj else None
    if len(fine) != len(data) or (coarse is not None and len(coarse) != len(data)):
        raise fail(f"{dataset}: {path}: {len(data)} images but {len(fine)} labels")
    return data.reshape(-1, 3, SIZE, SIZE), fine, coarse


_MEMO: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]] = {}


def _pickle_classes(d: Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """fine class -> uint8 [600, 3, 32, 32] (train then test), and fine class -> superclass."""
    key = str(d.resolve())
    if key in _MEMO:
        return _MEMO[key]
    fine_list, coarse_list = fine_names(), sorted(superclasses())
    if (d / "meta").is_file():
        meta = load_pickle(d / "meta", dataset, "CIFAR-100 meta")
        if isinstance(meta, dict) and "fine_label_names" in meta:
            fine_list = [str(n) for n in meta["fine_label_names"]]
            coarse_list = [str(n) for n in meta.get("coarse_label_names", coarse_list)]
    parts = [_part(d / "train", dataset), _part(d / "test", dataset)]
    images, parent = {}, {}
    fine_to_super = {f: s for s, fs in superclasses().items() for f in fs}
    for k, name in enumerate(fine_list):
        blocks = [x[fine == k] for x, fine, _ in parts]
        images[name] = np.concatenate(blocks)
        coarse = next((c[fine == k][0] for _, fine, c in parts if c is not None and (fine == k).any()), None)
        parent[name] = coarse_list[coarse] if coarse is not None else fine_to_super.get(name, "")
    if (labels := max(int(f.max(initial=-1)) for _, f, _ in parts)) >= len(fine_list):
        raise fail(f"{dataset}: {d}: fine label {labels} but only {len(fine_list)} class names")
    _MEMO.clear()
    _MEMO[key] = (images, parent)
    return images, parent


# ---- class folders ---------------------------------------------------------------------------
def _folder_classes(found: Found) -> dict[str, Path]:
    return {d.name: d for d in subdirs_of(found.path / "data")}


def _read_text_splits(folder: Path, dataset: str) -> dict[str, list[str]] | None:
    if not all((folder / f"{s}.txt").is_file() for s in SPLITS):
        return None
    out: dict[str, list[str]] = {}
    for s in SPLITS:
        try:
            lines = (folder / f"{s}.txt").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"{dataset}: cannot read {folder / f'{s}.txt'} ({e})") from None
        out[s] = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def _expand(table: dict[str, list[str]], parent: dict[str, str]) -> dict[str, list[str]]:
    """Replace superclass names by their fine classes (FC100)."""
    children: dict[str, list[str]] = {}
    for fine, sup in parent.items():
        children.setdefault(sup, []).append(fine)
    return {s: [f for n in names for f in (sorted(children[n]) if n in children else [n])]
            for s, names in table.items()}


def _load(dataset: str, locator: Locator, rule_dir: str, builtin: str, root, split: str, split_file) -> TensorSplit:
    check_split(dataset, split)
    found = locator.find(root)
    pickles = _pickle_dir(found.path)
    if pickles is not None:
        images, parent = _pickle_classes(pickles, dataset)
        folders = None
        available = list(images)
    else:
        folders = _folder_classes(found)
        parent = {f: s for s, fs in superclasses().items() for f in fs}  # CIFAR-100's own superclasses
        available = list(folders)
    if split_file is not None:
        table, source = read_split_file(split_file, dataset), f"split file {split_file}"
    elif folders is not None and (text := _read_text_splits(found.path / "splits" / rule_dir, dataset)):
        table, source = text, f"{found.path / 'splits' / rule_dir}/*.txt"
    else:
        table, source = builtin_split(builtin, dataset), f"the built-in {dataset} split"
    if dataset == "fc100":
        table = _expand(table, parent)
    classes = split_classes(dataset, split, available, table, source)
    if folders is not None:
        data = []
        for c in classes:
            files = image_files(folders[c])
            if not files:
                raise fail(f"{dataset}: no images in {folders[c]}")
            arr = np.stack([decode(f, str(f), size=SIZE) for f in files])
            data.append(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())
    else:
        data = [torch.from_numpy(images[c]) for c in classes]
    return TensorSplit(dataset, split, classes, data)


@register_dataset("cifar_fs", layouts="\n".join(CIFAR_FS.layouts))
def load_cifar_fs(root, split: str, *, split_file=None) -> TensorSplit:
    """CIFAR-FS ``split`` (Bertinetto et al. 64/16/20) under ``root``: 32x32 RGB, in memory."""
    return _load("cifar_fs", CIFAR_FS, "bertinetto", "cifar_fs_bertinetto", root, split, split_file)


@register_dataset("fc100", layouts="\n".join(FC100.layouts))
def load_fc100(root, split: str, *, split_file=None) -> TensorSplit:
    """FC100 ``split`` (Oreshkin et al. superclass split 60/20/20) under ``root``: 32x32 RGB, in memory."""
    return _load("fc100", FC100, "fc100", "fc100_oreshkin", root, split, split_file)
