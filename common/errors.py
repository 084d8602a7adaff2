"""The errors and checks every module uses: a leaf module (it imports nothing from the project), so the
modules that report input problems (config, checkpoint, runlog, tracking, flags) do not import ``common.cli``.

* ``UsageError``: a problem with the user's input, reported by ``common.cli.run`` as one line, exit status 2.
* ``Diverged``: the run stopped on a non-finite loss or parameters: one line, exit status 3.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


class Diverged(Exception):
    """The run stopped on a non-finite loss or parameters: reported as one line, exit status 3."""


EXIT_USAGE, EXIT_DIVERGED = 2, 3


def check(condition: bool, message: str) -> None:
    """Raise ``UsageError(message)`` unless ``condition``."""
    if not condition:
        raise UsageError(message)


def read_json(path: str | os.PathLike, missing: str | None = None) -> object:
    """The JSON in ``path``. A missing file (``missing``: the message, else "no such file") or one that is not
    JSON is a ``UsageError`` (one line, exit status 2), not a traceback."""
    path = Path(path)
    check(path.is_file(), missing or f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not JSON ({e})") from None


def check_out_dir(path: str | os.PathLike, flag: str = "--out-dir") -> Path:
    """``path`` can be (or become) a folder we may write in: not a file, and the nearest existing ancestor is
    a writable folder. Checked without creating anything; ``UsageError`` otherwise."""
    path = Path(path)
    check(not path.exists() or path.is_dir(), f"{flag} {path} is a file; expected a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    check(probe.is_dir(), f"{flag} {path}: {probe} is a file, not a folder; expected a folder path")
    check(os.access(probe, os.W_OK | os.X_OK), f"{flag} {path}: {probe} is not writable; choose a writable folder")
    return path
