"""The wheel: built, installed in a fresh virtualenv, and run from another directory.

The fresh environment reuses this one's dependencies (torch, ...) through a ``.pth`` line, so no
package is downloaded; the innerloop it imports is the installed wheel's, not the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a clean copy: setuptools reuses a build/ directory in the tree, stale files included
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (whl,) = out.glob("innerloop-*.whl")
    return whl


def test_wheel_ships_configs_tables_licence_and_types(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tables = {n for n in names if n.startswith("innerloop/configs/tables/") and n.endswith(".toml")}
    assert {Path(t).name for t in tables} == {p.name for p in (ROOT / "configs" / "tables").glob("*.toml")}
    assert {f"innerloop/configs/{p.name}" for p in (ROOT / "configs").glob("*.toml")} <= names
    assert "innerloop/py.typed" in names and "innerloop/data/images/assets/glyphs.npz" in names
    assert any(n.endswith("LICENSE") for n in names)


def test_installed_wheel_reproduces_a_table_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([py, "-c", "import innerloop; print(innerloop.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(site))
    cli = venv / "bin" / "innerloop"
    assert subprocess.run([cli, "reproduce", "--help"], cwd=work, env=env, capture_output=True).returncode == 0
    r = subprocess.run([cli, "reproduce", "sine_rules", "--rows", "sgd", "--smoke", "--out", "res"], cwd=work,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((work / "res" / "sine_rules.json").read_text())
    assert report["rows"][0]["iterations"] == 1 and report["rows"][0]["tasks"] == 2
