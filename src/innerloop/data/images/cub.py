"""CUB-200-2011 (Wah et al., 2011): 200 bird species, 11788 images, read from the extracted archive
``CUB_200_2011/images/<NNN.Species_name>/*.jpg`` (archive CUB_200_2011.tgz, md5
97eceeb196236b17998738112f37df78; never downloaded). Images are decoded on demand to 84x84 RGB
(Lanczos). Classes are the folder names, e.g. ``"001.Black_footed_Albatross"``.

Split: the 100 / 50 / 50 rule of Hilliard et al. (2018) as used by Chen et al., "A Closer Look at
Few-shot Classification" (ICLR 2019, ``filelists/CUB/write_CUB_filelist.py``): with the class
folders sorted by name and numbered i = 0..199, class i is train if i % 2 == 0, val if i % 4 == 1,
test if i % 4 == 3. ``split_file`` overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from innerloop.data.images._common import (
    Locator,
    check_split,
    folder_split,
    read_split_file,
    register_locator,
    subdirs_of,
)
from innerloop.data.images.base import FileSplit, register_dataset

NAME = "cub"
SIZE = 84
CLASS_DIR = re.compile(r"^\d{3}\.")
LAYOUTS = (
    "CUB_200_2011/images/<NNN.Species>/*.jpg (the extracted CUB_200_2011.tgz, md5 "
    "97eceeb196236b17998738112f37df78), the root being CUB_200_2011/, its parent, or cub/",
)


def _probe(p: Path) -> str | None:
    images = p / "images"
    if images.is_dir() and any(CLASS_DIR.match(d.name) for d in subdirs_of(images)):
        return "CUB_200_2011/images/<class>/"
    return None


LOCATOR = register_locator(Locator(
    NAME, ("CUB_200_2011", "cub", "CUB", "cub/CUB_200_2011", "CUB/CUB_200_2011", "CUB_200_2011/CUB_200_2011"),
    _probe, LAYOUTS, expected={"train": 100, "val": 50, "test": 50}))


def closer_look_split(classes: Sequence[str]) -> dict[str, list[str]]:
    """The 100/50/50 rule on the sorted class folders (i % 2 == 0 train, i % 4 == 1 val, i % 4 == 3 test)."""
    order = sorted(classes)
    return {"train": [c for i, c in enumerate(order) if i % 2 == 0],
            "val": [c for i, c in enumerate(order) if i % 4 == 1],
            "test": [c for i, c in enumerate(order) if i % 4 == 3]}


@register_dataset(NAME, layouts="\n".join(LAYOUTS))
def load(root, split: str, *, split_file=None) -> FileSplit:
    """CUB ``split`` under ``root`` (84x84 RGB, decoded on demand)."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    folders = {d.name: d for d in subdirs_of(found.path / "images")}
    if split_file is not None:
        table, source = read_split_file(split_file, NAME), f"split file {split_file}"
    else:
        table, source = closer_look_split(list(folders)), "the 100/50/50 rule"
    return folder_split(NAME, split, folders, table, source, SIZE)
