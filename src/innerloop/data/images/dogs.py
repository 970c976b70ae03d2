"""Stanford Dogs (Khosla et al., 2011): 120 breeds, 20580 images, read from ``Images/<wnid-Breed>/*.jpg``
of the extracted images.tar (no published checksum; never downloaded). Images are decoded on demand
to 84x84 RGB (Lanczos). Classes are the breed folder names, e.g. ``"n02085620-Chihuahua"``.

Split: 70 / 20 / 30 breeds, the lists of Li et al. (CovaMNet, AAAI 2019; DN4, CVPR 2019), in
``splits/dogs_li.toml``. ``split_file`` overrides it.
"""

from __future__ import annotations

import re
from pathlib import Path

from innerloop.data.images._common import (
    Locator,
    builtin_split,
    check_split,
    folder_split,
    read_split_file,
    register_locator,
    subdirs_of,
)
from innerloop.data.images.base import FileSplit, register_dataset

NAME = "dogs"
SIZE = 84
BREED_DIR = re.compile(r"^n\d{8}-")
LAYOUTS = (
    "Images/<wnid-Breed>/*.jpg (the extracted images.tar of vision.stanford.edu/aditya86/ImageNetDogs; no "
    "published checksum), the root being that folder's parent or StanfordDogs/, stanford_dogs/, dogs/",
)


def _images_dir(p: Path) -> Path | None:
    for name in ("Images", "images"):
        d = p / name
        if d.is_dir() and any(BREED_DIR.match(s.name) for s in subdirs_of(d)):
            return d
    return None


def _probe(p: Path) -> str | None:
    d = _images_dir(p)
    return f"{d.name}/<breed>/" if d is not None else None


LOCATOR = register_locator(Locator(
    NAME, ("StanfordDogs", "stanford_dogs", "Stanford_Dogs", "stanford-dogs", "Stanford-Dogs", "dogs", "Dogs"),
    _probe, LAYOUTS, expected={"train": 70, "val": 20, "test": 30}))


@register_dataset(NAME, layouts="\n".join(LAYOUTS))
def load(root, split: str, *, split_file=None) -> FileSplit:
    """Stanford Dogs ``split`` under ``root`` (84x84 RGB, decoded on demand)."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    folders = {d.name: d for d in subdirs_of(_images_dir(found.path))}
    if split_file is not None:
        table, source = read_split_file(split_file, NAME), f"split file {split_file}"
    else:
        table, source = builtin_split("dogs_li", NAME), "the built-in 70/20/30 split (splits/dogs_li.toml)"
    return folder_split(NAME, split, folders, table, source, SIZE)
