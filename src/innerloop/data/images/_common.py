"""Shared parts of the on-disk loaders: finding a dataset under a root, split files, image decoding,
guarded pickle reading, and two :class:`SplitData` kinds for data that arrives as one big array or as
encoded image bytes.

Every failure is a :class:`DatasetError` whose message is one line naming the dataset and the file.

Split files (``split_file=``, any dataset) are TOML (or JSON when the name ends in ``.json``) with one
list of class names per split, exactly the names the loader uses for that dataset (shown by
``innerloop data check``)::

    # my_split.toml
    train = ["n01532829", "n01558993"]
    val = ["n01855672"]
    test = ["n01930112"]

Only the requested split's list has to be present; a class listed in two splits is an error.
The built-in class lists under ``splits/`` use the same format (plus documented extra tables).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from innerloop.data.images.base import DatasetError, FileSplit, SplitData

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def fail(message: str) -> DatasetError:
    """A :class:`DatasetError` with the message folded onto one line."""
    return DatasetError(re.sub(r"\s*\n\s*", " ", message).strip())


def check_split(dataset: str, split: str) -> None:
    if split not in SPLITS:
        raise fail(f"{dataset}: unknown split {split!r} (splits: {', '.join(SPLITS)})")


# ---- locating a dataset under a root ---------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """Where a dataset lies: ``path`` is the folder holding it, ``layout`` a short layout name."""

    path: Path
    layout: str


Probe = Callable[[Path], "str | None"]  # folder -> layout name if the folder holds the dataset


@dataclass(frozen=True)
class Locator:
    """How to find one dataset: the sub-folders searched under the root (the root itself first) and a
    probe telling whether a folder holds the dataset and in which layout."""

    dataset: str
    subdirs: tuple[str, ...]
    probe: Probe
    layouts: tuple[str, ...]  # human-readable accepted layouts (with checksums where published)
    expected: dict[str, int] = field(default_factory=dict)  # classes per split of the default split
    # the default split's classes per split for a given layout, where it depends on the layout (Omniglot
    # with images_background only); None: ``expected`` for every layout
    expected_for: Callable[[str], dict[str, int]] | None = None
    checksums: dict[str, str] = field(default_factory=dict)  # file (relative to the found folder) -> md5
    reference: Callable[[], dict[str, list[str]]] | None = None  # published class lists, for data check
    check_options: dict = field(default_factory=dict)  # extra load() options used by data check

    def candidates(self, root: Path) -> list[Path]:
        out: list[Path] = []
        for sub in ("", *self.subdirs):
            p = root / sub if sub else root
            if p not in out:
                out.append(p)
        return out

    def locate(self, root: str | Path) -> Found | None:
        """The dataset under ``root``, or None (never raises for a missing dataset)."""
        root = Path(root).expanduser()
        for p in self.candidates(root):
            if p.is_dir():
                layout = self.probe(p)
                if layout:
                    return Found(p, layout)
        return None

    def layouts_text(self) -> str:
        return "; ".join(self.layouts)

    def find(self, root: str | Path | None) -> Found:
        """The dataset under ``root``; a :class:`DatasetError` naming every path searched otherwise."""
        if root is None:
            raise fail(f"{self.dataset}: no data root given (set task.root to the folder that holds the data); "
                       f"accepted layouts: {self.layouts_text()}")
        path = Path(root).expanduser()
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise fail(f"{self.dataset}: data root {path} {what}; accepted layouts: {self.layouts_text()}")
        found = self.locate(path)
        if found is None:
            searched = ", ".join(str(p) for p in self.candidates(path))
            raise fail(f"{self.dataset} not found under {path} (searched {searched}); "
                       f"accepted layouts: {self.layouts_text()}")
        return found


LOCATORS: dict[str, Locator] = {}


def register_locator(locator: Locator) -> Locator:
    """Make a dataset visible to ``innerloop data check``."""
    LOCATORS[locator.dataset] = locator
    return locator


def subdirs_of(path: Path) -> list[Path]:
    """Sorted visible sub-folders (an unreadable folder counts as empty)."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def image_files(path: Path) -> list[Path]:
    """Sorted visible image files of a folder (by extension, case-insensitive)."""
    try:
        return sorted(p for p in path.iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
    except OSError as e:
        raise fail(f"cannot list images in {path}: {e}") from None


# ---- split files -----------------------------------------------------------------------------
def _split_table(data: object, source: str, dataset: str) -> dict[str, list[str]]:
    if not isinstance(data, dict):
        raise fail(f"{dataset}: split file {source} must hold a table of lists (train = [...], ...)")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split in SPLITS:
        if split not in data:
            continue
        names = data[split]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise fail(f"{dataset}: split file {source}: '{split}' must be a list of class names (strings)")
        for n in names:
            if n in owner:
                raise fail(f"{dataset}: split file {source} lists class {n!r} in both {owner[n]} and {split}")
            owner[n] = split
        out[split] = list(names)
    return out


def read_split_file(path: str | Path, dataset: str) -> dict[str, list[str]]:
    """Class names per split from a user TOML/JSON file (see the module docstring for the format)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise fail(f"{dataset}: split file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"{dataset}: cannot read split file {p}: {e}") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise fail(f"{dataset}: split file {p} is not valid {kind} ({e})") from None
    return _split_table(data, str(p), dataset)


@cache
def builtin_table(name: str) -> dict:
    """A built-in split file ``splits/<name>.toml`` shipped with the package (parsed TOML)."""
    text = resources.files("innerloop.data.images").joinpath("splits", f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def builtin_split(name: str, dataset: str) -> dict[str, list[str]]:
    return _split_table(builtin_table(name), f"(built-in splits/{name}.toml)", dataset)


def split_classes(dataset: str, split: str, available: Sequence[str], table: dict[str, list[str]],
                  source: str) -> list[str]:
    """The classes of ``split`` listed in ``table``, each checked to exist among ``available``."""
    if split not in table:
        raise fail(f"{dataset}: {source} has no '{split}' list (expected keys: {', '.join(SPLITS)})")
    wanted = table[split]
    have = set(available)
    missing = [c for c in wanted if c not in have]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise fail(f"{dataset}: class {missing[0]!r}{more} of the {split} split in {source} not found in the data "
                   f"({len(have)} classes found)")
    if not wanted:
        raise fail(f"{dataset}: the {split} split in {source} is empty")
    return list(wanted)


# ---- images ------------------------------------------------------------------------------------
def decode(src: Path | bytes, name: str, *, size: int, mode: str = "RGB", crop_bottom: int = 0) -> np.ndarray:
    """Decode one image to ``uint8`` ``[size, size]`` (mode "L") or ``[size, size, 3]`` (mode "RGB"):
    convert, optionally cut ``crop_bottom`` rows off the bottom, resize with Lanczos."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes | bytearray) else src) as im:
            im.load()
            im = im.convert(mode)
        if crop_bottom:
            w, h = im.size
            if h <= crop_bottom:
                raise fail(f"image {name} is {h} pixels high, too small to cut a {crop_bottom}-pixel banner")
            im = im.crop((0, 0, w, h - crop_bottom))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
    except DatasetError:
        raise
    except Image.UnidentifiedImageError:
        raise fail(f"cannot read image {name}: not an image file PIL can identify (corrupt or truncated?)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).replace(repr(name), "").replace(name, "").strip(" :") or "unreadable"
        raise fail(f"cannot read image {name}: {type(e).__name__}: {reason}") from None


def to_chw(a: np.ndarray) -> Tensor:
    """``uint8`` HxW (gray), HxWxC or NxHxWxC to a contiguous torch tensor with channels before H, W."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.unsqueeze(0) if a.ndim == 2 else t.movedim(-1, -3).contiguous()


class DecodeFile:
    """Picklable ``path -> uint8 [C, size, size]`` for :class:`FileSplit` (DataLoader workers)."""

    def __init__(self, size: int, mode: str = "RGB", crop_bottom: int = 0):
        self.size, self.mode, self.crop_bottom = size, mode, crop_bottom

    def __call__(self, path: Path) -> Tensor:
        return to_chw(decode(Path(path), str(path), size=self.size, mode=self.mode, crop_bottom=self.crop_bottom))


class ArraySplit(SplitData):
    """Images held as one ``uint8`` array ``[N, H, W, C]`` (e.g. a pickle's ``image_data``); class ``c``
    owns rows ``indices[c]``. Images are copied out per request, so the array is never duplicated."""

    def __init__(self, dataset: str, split: str, classes: list[str], array: np.ndarray, indices: list[np.ndarray]):
        if not classes:
            raise fail(f"{dataset} {split}: no classes")
        self.dataset, self.split, self.classes = dataset, split, list(classes)
        self.array, self.indices = array, [np.asarray(i, dtype=np.int64) for i in indices]
        _, h, w, c = array.shape
        self.image_shape = (int(c), int(h), int(w))

    def count(self, c: int) -> int:
        return int(len(self.indices[c]))

    def images(self, c: int, idx: Sequence[int]) -> Tensor:
        rows = self.indices[c][np.asarray(list(idx), dtype=np.int64)]
        return to_chw(self.array[rows])


class EncodedSplit(SplitData):
    """Images kept as encoded bytes (PNG/JPEG, e.g. tieredImageNet's pickles) and decoded on demand;
    class ``c`` owns items ``indices[c]`` of ``blobs``."""

    def __init__(self, dataset: str, split: str, classes: list[str], blobs: Sequence, indices: list[np.ndarray],
                 size: int, source: str):
        if not classes:
            raise fail(f"{dataset} {split}: no classes")
        self.dataset, self.split, self.classes = dataset, split, list(classes)
        self.blobs, self.indices, self.size, self.source = blobs, [np.asarray(i) for i in indices], size, source
        self.image_shape = (3, size, size)

    def count(self, c: int) -> int:
        return int(len(self.indices[c]))

    def images(self, c: int, idx: Sequence[int]) -> Tensor:
        out = []
        for i in idx:
            k = int(self.indices[c][i])
            a = decode(as_bytes(self.blobs[k]), f"{self.source} item {k}", size=self.size)
            out.append(to_chw(a))
        return torch.stack(out)


def as_bytes(blob) -> bytes:
    """Encoded image bytes from what pickles hold: bytes, a uint8 array (cv2.imencode), or a Python 2
    ``str`` read back with ``encoding="latin1"``."""
    if isinstance(blob, bytes | bytearray):
        return bytes(blob)
    if isinstance(blob, np.ndarray):
        return blob.tobytes()
    if isinstance(blob, str):
        return blob.encode("latin1")
    raise fail(f"expected encoded image bytes, got {type(blob).__name__}")


# ---- pickles -----------------------------------------------------------------------------------
_NUMPY_CLASSES = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
}
_PLAIN_CLASSES = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                  ("__builtin__", "set"), ("copy_reg", "_reconstructor"), ("builtins", "bytearray"),
                  ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 rebuild bytes with it


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: dataset pickles come from the internet, and loading
    one must never run code."""

    def find_class(self, module: str, name: str):
        if (module.replace("numpy._core", "numpy.core"), name) in _NUMPY_CLASSES:
            if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
                module = "numpy._core" + module[len("numpy.core"):]  # avoid numpy 2's deprecated alias
            return super().find_class(module, name)
        if (module, name) in _PLAIN_CLASSES:
            if module == "copy_reg":
                module = "copyreg"
            return super().find_class("builtins" if module == "__builtin__" else module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data pickle does not need")


def _what_it_is(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return ""
    text = head.lstrip().lower()
    if not head:
        return "the file is empty"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "it looks like an HTML/XML page (a failed download saved under this name?)"
    if head.startswith(b"PK"):
        return "it is a zip archive; extract it first"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed; decompress it first"
    if head.startswith((b"\x80", b"(", b"}", b"]")):
        return "it is a truncated or foreign pickle"
    return "it is not a pickle"


def load_pickle(path: Path, dataset: str, what: str):
    """Read a data pickle (Python 2 or 3; numpy arrays allowed, nothing executable); a file that is not
    what it should be (e.g. an HTML page saved under the name) is a one-line :class:`DatasetError`."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise fail(f"{dataset}: cannot open {path}: {e}") from None
    with f:
        try:
            return _DataUnpickler(f, encoding="latin1").load()
        except MemoryError:
            raise fail(f"{dataset}: not enough memory to read {path}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
                KeyError, UnicodeDecodeError, OverflowError) as e:
            hint = _what_it_is(path)
            raise fail(f"{dataset}: {path} is not a valid {what} pickle ({hint}; {type(e).__name__}: {e})") from None


def folder_split(dataset: str, split: str, folders: dict[str, Path], table: dict[str, list[str]], source: str,
                 size: int):
    """A lazily decoded split of class folders (``folders``: class name → folder) chosen by ``table``."""
    classes = split_classes(dataset, split, list(folders), table, source)
    files = [image_files(folders[c]) for c in classes]
    empty = [c for c, f in zip(classes, files, strict=True) if not f]
    if empty:
        raise fail(f"{dataset}: no images in {folders[empty[0]]}")
    return FileSplit(dataset, split, classes, files, DecodeFile(size), (3, size, size))
