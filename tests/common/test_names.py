"""The guard on the top-level names: another package's ``common`` or ``plots`` on sys.path stops ``import common``
in one line naming its file; this project's own folders, namespace folders and a clean path pass."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import names

REPO = Path(__file__).resolve().parents[2]


def fake(root: Path, name: str, package: bool = True) -> Path:
    """A foreign module ``name`` under ``root``: a regular package, or a one-file module."""
    path = root / name / "__init__.py" if package else root / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("X = 1\n")
    return path


def test_this_projects_folders_and_namespace_folders_are_no_collision(tmp_path):
    (tmp_path / "common").mkdir()   # a folder without __init__.py: a namespace portion, which ours wins over
    assert names.collision([str(REPO), str(tmp_path)]) is None
    assert names.collision() is None  # the environment the tests run in


@pytest.mark.parametrize("name,package", [("common", True), ("plots", False)])
def test_another_common_or_plots_is_named_with_its_file(tmp_path, name, package):
    other = fake(tmp_path, name, package)
    assert names.others(name, [str(REPO), str(tmp_path)]) == [str(other.resolve())]
    line = names.collision([str(tmp_path), str(REPO)])
    assert line.startswith(f"fedlab-studies: another installed package provides a top-level `{name}` "
                           f"({other.resolve()})")
    assert "\n" not in line and "virtual environment" in line


def test_import_common_stops_in_one_line(tmp_path):
    fake(tmp_path, "plots")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-c", "import common"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "top-level `plots`" in done.stderr and "Traceback" not in done.stderr
