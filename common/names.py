"""The project's top-level import names, ``common`` and ``plots``, checked against other installed packages.

The distribution is ``fedlab-studies``, but its packages keep the short top-level names of the layout (every module
and test imports ``common``; a namespace would rename ~300 import lines for a collision few environments have).
The cost is that another installed package with a top-level ``common`` or ``plots`` collides with ours: whichever
comes first on ``sys.path`` is imported for both, and the other one's code fails later in an obscure way. So
``common`` checks at import, before anything else runs, that no other ``common`` or ``plots`` is importable from
``sys.path``, and stops in one line naming the other file when one is (``import common`` runs this check).
"""
from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

NAMES = ("common", "plots")
ROOT = Path(__file__).resolve().parents[1]  # the folder that holds common/ and plots/


def others(name: str, paths: list[str] | None = None) -> list[str]:
    """Files of modules or regular packages called ``name`` on ``paths`` (default ``sys.path``) that are not this
    project's; namespace-package folders (no ``__init__.py``) are left out: a regular package always wins over them."""
    found = []
    for entry in sys.path if paths is None else paths:
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, [entry or "."])
        except (ImportError, OSError, ValueError):
            continue
        if spec is None or not spec.origin or spec.origin in ("namespace", "built-in", "frozen"):
            continue
        origin = Path(spec.origin).resolve()
        if origin != ROOT / name / "__init__.py" and str(origin) not in found:
            found.append(str(origin))
    return found


def collision(paths: list[str] | None = None) -> str | None:
    """One line saying which other package's ``common`` / ``plots`` is importable and what to do; None if none is."""
    for name in NAMES:
        other = others(name, paths)
        if other:
            return (f"fedlab-studies: another installed package provides a top-level `{name}` ({other[0]}), "
                    f"which collides with this project's {ROOT / name}; uninstall that package or install this "
                    "project into a virtual environment of its own")
    return None


def guard() -> None:
    """Stop with ``collision()``'s line (exit status 1) when another ``common`` or ``plots`` is importable."""
    problem = collision()
    if problem:
        raise SystemExit(problem)
