"""FGVC-Aircraft (Maji et al., 2013; release fgvc-aircraft-2013b): 10000 images of 100 aircraft
variants, read from ``fgvc-aircraft-2013b/data/images/<id>.jpg`` and the variant lists
``data/images_variant_{train,val,test}.txt`` (or ``images_variant_trainval.txt``), lines
``<id> <variant>`` (never downloaded). Images are decoded on demand: the 20-pixel copyright banner at
the bottom is cut off, then the image is resized to 84x84 RGB (Lanczos). Classes are the variant names,
e.g. ``"A340-300"``; every image of a variant belongs to its class, whatever its official subset.

Split: Meta-Dataset's 70 / 15 / 15 variants (``splits/aircraft_meta_dataset.toml``). ``split_file``
overrides it.
"""

from __future__ import annotations

from pathlib import Path

from innerloop.data.images._common import (
    DecodeFile,
    Found,
    Locator,
    builtin_split,
    check_split,
    fail,
    read_split_file,
    register_locator,
    split_classes,
)
from innerloop.data.images.base import FileSplit, register_dataset

NAME = "aircraft"
SIZE = 84
BANNER = 20  # pixels of copyright banner at the bottom of every image
LISTS = ("train", "val", "test", "trainval")
LAYOUTS = (
    "fgvc-aircraft-2013b/data/images/*.jpg + data/images_variant_{train,val,test}.txt (or _trainval.txt) "
    "from the extracted fgvc-aircraft-2013b.tar.gz (its md5 is published on the FGVC-Aircraft page, not "
    "recorded here); the root being fgvc-aircraft-2013b/, its data/ folder, their parent, or aircraft/",
)


def _probe(p: Path) -> str | None:
    if (p / "images").is_dir() and any((p / f"images_variant_{s}.txt").is_file() for s in LISTS):
        return "fgvc-aircraft-2013b/data"
    return None


LOCATOR = register_locator(Locator(
    NAME, ("fgvc-aircraft-2013b/data", "fgvc-aircraft-2013b", "aircraft/fgvc-aircraft-2013b/data", "aircraft/data",
           "aircraft", "fgvc_aircraft/fgvc-aircraft-2013b/data", "FGVC-Aircraft/fgvc-aircraft-2013b/data", "data"),
    _probe, LAYOUTS, expected={"train": 70, "val": 15, "test": 15}))


def catalog(found: Found) -> dict[str, list[Path]]:
    """variant -> its image files, from every variant list present."""
    variant_of: dict[str, str] = {}
    for s in LISTS:
        path = found.path / f"images_variant_{s}.txt"
        if not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"{NAME}: cannot read {path} ({e})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            if not variant.strip():
                raise fail(f"{NAME}: {path} line {n}: expected '<image id> <variant>', got {line.strip()!r}")
            variant = variant.strip()
            if variant_of.setdefault(image, variant) != variant:
                raise fail(f"{NAME}: image {image} is {variant_of[image]!r} in one list and {variant!r} in {path}")
    out: dict[str, list[Path]] = {}
    for image in sorted(variant_of):
        f = found.path / "images" / f"{image}.jpg"
        if not f.is_file():
            raise fail(f"{NAME}: image {f} listed in the variant files not found")
        out.setdefault(variant_of[image], []).append(f)
    return out


@register_dataset(NAME, layouts="\n".join(LAYOUTS))
def load(root, split: str, *, split_file=None) -> FileSplit:
    """FGVC-Aircraft ``split`` under ``root`` (banner cut, 84x84 RGB, decoded on demand)."""
    check_split(NAME, split)
    found = LOCATOR.find(root)
    files = catalog(found)
    if split_file is not None:
        table, source = read_split_file(split_file, NAME), f"split file {split_file}"
    else:
        table, source = builtin_split("aircraft_meta_dataset", NAME), "Meta-Dataset's split"
    classes = split_classes(NAME, split, list(files), table, source)
    return FileSplit(NAME, split, classes, [files[c] for c in classes], DecodeFile(SIZE, crop_bottom=BANNER),
                     (3, SIZE, SIZE))
