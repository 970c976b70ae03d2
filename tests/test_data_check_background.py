"""``innerloop data check`` on an Omniglot root holding only ``images_background`` (issue 17): the
documented background-only split (664 / 100 / 200 of its 964 characters) is what it expects, so a
complete copy reports no problem; a copy with characters missing still does."""

from __future__ import annotations

import pytest

from innerloop.data.images import omniglot
from innerloop.experiments.cli import main
from test_image_loaders import drawing


def background_root(base, chars: int, evaluation: int = 0):
    for part, n in (("images_background", chars), ("images_evaluation", evaluation)):
        for c in range(n):
            d = base / part / f"Alpha_{part[7]}" / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            drawing(c).save(d / f"{c:04d}_01.png")
    return base


@pytest.fixture
def small(monkeypatch):
    """A background part of 8 characters split 4 / 2 / 2 (the real one: 964 as 664 / 100 / 200)."""
    monkeypatch.setattr(omniglot, "BACKGROUND_CHARACTERS", 8)
    monkeypatch.setattr(omniglot, "BACKGROUND_SIZES", (4, 2))


def test_the_documented_background_split():
    got = omniglot.expected_classes("image folders" + omniglot.BACKGROUND_ONLY)
    assert got == {"train": 664, "val": 100, "test": 200}
    assert omniglot.expected_classes("image folders") == {"train": 1100, "val": 100, "test": 423}


def test_complete_background_only_copy_has_no_problem(tmp_path, small, capsys):
    root = background_root(tmp_path, 8)
    assert main(["data", "check", "--root", str(root), "--dataset", "omniglot"]) == 0
    out = capsys.readouterr().out
    assert "images_background only" in out and "problems: none" in out
    assert [line.split()[:2] for line in out.splitlines() if line.strip().split()[:1] in (["train"], ["val"],
                                                                                            ["test"])] == \
        [["train", "4"], ["val", "2"], ["test", "2"]]


def test_background_only_copy_with_a_wrong_count_is_a_problem(tmp_path, small, capsys):
    root = background_root(tmp_path, 9)  # one character more than images_background has
    assert main(["data", "check", "--root", str(root), "--dataset", "omniglot"]) == 1
    assert "test: 3 classes; the background-only split has 2" in capsys.readouterr().out


def test_both_parts_are_still_checked_against_the_standard_split(tmp_path, small, capsys):
    root = background_root(tmp_path, 8, evaluation=2)
    assert main(["data", "check", "--root", str(root), "--dataset", "omniglot"]) == 1
    assert "the standard split has 1100" in capsys.readouterr().out
