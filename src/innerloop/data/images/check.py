"""``innerloop data check``: which image datasets lie under a data root, in which layout, how many
classes and images each split has, and every problem found.

For each dataset with an on-disk loader, the usual sub-folders of the root are searched (as the
loaders do). A dataset that is found is loaded split by split with its default split rule; the check
reports load errors, class counts that differ from the standard split, classes absent from the
published class lists, classes in two splits, classes without images, files whose md5 differs from the
published one, and images that cannot be decoded -- the first image of every class, or every image
with ``all_images=True``; each unreadable image is named, up to :data:`MAX_IMAGE_PROBLEMS` per split,
and the rest are counted. Nothing is written to the data folders.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from innerloop.data.images._common import LOCATORS, Found, fail
from innerloop.data.images.base import DATASETS, DatasetError

#: unreadable images named per split; beyond it they are counted (a wholly broken copy of a dataset
#: would otherwise print tens of thousands of lines)
MAX_IMAGE_PROBLEMS = 200


@dataclass
class SplitReport:
    split: str
    classes: int
    images: int
    fewest: int  # images in the smallest class


@dataclass
class DatasetReport:
    name: str
    found: Found | None
    searched: list[Path]
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_images(data, counts: list[int], all_images: bool) -> list[str]:
    bad: list[str] = []
    for c, n in enumerate(counts):
        for i in range(n if all_images else min(n, 1)):
            try:
                x = data.images(c, [i])
            except DatasetError as e:
                bad.append(str(e))
                continue
            if tuple(x.shape[1:]) != tuple(data.image_shape):
                bad.append(f"class {data.classes[c]} image {i}: shape {tuple(x.shape[1:])}, "
                           f"expected {tuple(data.image_shape)}")
    return bad


def check_dataset(name: str, root: str | Path, *, all_images: bool = False) -> DatasetReport:
    """Locate and check one dataset under ``root`` (never raises for a missing or broken dataset)."""
    loc = LOCATORS[name]
    root = Path(root).expanduser()
    found = loc.locate(root)
    report = DatasetReport(name, found, loc.candidates(root))
    if found is None:
        return report
    for rel, md5 in loc.checksums.items():
        f = found.path / rel
        if f.is_file() and (got := md5sum(f)) != md5:
            report.problems.append(f"{f}: md5 {got} differs from the published {md5}")
    spec, reference = DATASETS[name], loc.reference() if loc.reference else None
    expected_counts = loc.expected_for(found.layout) if loc.expected_for else loc.expected
    owner: dict[str, str] = {}
    for split in spec.splits:
        try:
            data = spec.load(root, split, **loc.check_options)
        except DatasetError as e:
            msg = str(e)
            report.problems.append(f"{split}: {msg[len(name) + 2:] if msg.startswith(f'{name}: ') else msg}")
            continue
        counts = [data.count(i) for i in range(len(data.classes))]
        report.splits.append(SplitReport(split, len(data.classes), sum(counts), min(counts, default=0)))
        expected = expected_counts.get(split)
        if expected is not None and len(data.classes) != expected:
            which = "the background-only" if "images_background only" in found.layout else "the standard"
            report.problems.append(f"{split}: {len(data.classes)} classes; {which} split has {expected}")
        if reference is not None:
            published = set(reference.get(split, ()))
            foreign = [c for c in data.classes if c not in published]
            if foreign:
                report.problems.append(f"{split}: {len(foreign)} classes not in the published {split} list, "
                                       f"e.g. {foreign[0]}")
        for c in data.classes:
            if c in owner:
                report.problems.append(f"class {c} is in both {owner[c]} and {split}")
            owner.setdefault(c, split)
        empty = [c for c, n in zip(data.classes, counts, strict=True) if n == 0]
        if empty:
            report.problems.append(f"{split}: {len(empty)} classes without images, e.g. {empty[0]}")
        bad = _check_images(data, counts, all_images)
        report.problems += [f"{split}: {b}" for b in bad[:MAX_IMAGE_PROBLEMS]]
        if len(bad) > MAX_IMAGE_PROBLEMS:
            report.problems.append(f"{split}: {len(bad) - MAX_IMAGE_PROBLEMS} more unreadable images "
                                   f"({len(bad)} in all; the first {MAX_IMAGE_PROBLEMS} are listed)")
    return report


def check_root(root: str | Path, names: list[str] | None = None, *, all_images: bool = False) -> list[DatasetReport]:
    """Check every dataset with an on-disk loader (or ``names``) under ``root``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise fail(f"data root {path} {what} (give --root PATH or set INNERLOOP_DATA)")
    names = sorted(LOCATORS) if names is None else names
    unknown = [n for n in names if n not in LOCATORS]
    if unknown:
        raise fail(f"no on-disk loader for dataset {unknown[0]!r} (known: {', '.join(sorted(LOCATORS))})")
    return [check_dataset(n, path, all_images=all_images) for n in names]


def format_reports(root: str | Path, reports: list[DatasetReport]) -> str:
    base = Path(root).expanduser()
    lines = [f"Image datasets under {base}:"]
    for r in reports:
        if r.found is None:
            rel = [p.relative_to(base).as_posix() if p != base else "." for p in r.searched]
            lines.append(f"{r.name}: not found (searched {', '.join(rel)})")
            continue
        lines.append(f"{r.name}: found in {r.found.path} (layout: {r.found.layout})")
        if r.splits:
            lines.append(f"  {'split':<6} {'classes':>8} {'images':>8} {'fewest/class':>13}")
            for s in r.splits:
                lines.append(f"  {s.split:<6} {s.classes:>8} {s.images:>8} {s.fewest:>13}")
        if r.problems:
            lines.append(f"  problems ({len(r.problems)}):")
            lines += [f"    - {p}" for p in r.problems]
        else:
            lines.append("  problems: none")
    found = [r for r in reports if r.found is not None]
    n_problems = sum(len(r.problems) for r in found)
    lines.append(f"{len(found)} of {len(reports)} datasets found; {n_problems} problem{'s' * (n_problems != 1)}.")
    return "\n".join(lines)


def run(root: str | Path, names: list[str] | None = None, *, all_images: bool = False) -> tuple[str, int]:
    """The report text and an exit status: 0 when every dataset found is sound, 1 when a problem was
    found or no dataset at all."""
    reports = check_root(root, names, all_images=all_images)
    found = [r for r in reports if r.found is not None]
    status = 0 if found and not any(r.problems for r in found) else 1
    return format_reports(root, reports), status
