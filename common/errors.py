"""The errors and checks every module uses; a leaf module (it imports nothing from the project), so modules that
report input problems need not import ``common.cli`` (whose ``run`` reports these errors)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


class Diverged(Exception):
    """The run stopped on a non-finite loss or parameters: reported as one line, exit status 3."""


EXIT_USAGE, EXIT_DIVERGED = 2, 3
RUN_FILE = "args.json"  # a folder holding it is a run directory (``common.runlog``)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """An exception's first line (at most ``limit`` characters), or its type's name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def read_text(path: str | os.PathLike, expected: str, prefix: str = "") -> str:
    """``path``'s UTF-8 text; a one-line ``UsageError`` (``prefix``, the path, what is ``expected``) when it is not
    UTF-8 or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problem = f"is not UTF-8 text (byte {e.start}: {e.reason})"
    except OSError as e:
        problem = f"cannot be read ({e.strerror})"
    raise UsageError(f"{prefix}{path} {problem}; expected {expected}")


def read_json(path: str | os.PathLike, missing: str | None = None) -> object:
    """The JSON in ``path``; a ``UsageError`` for a missing file (message ``missing``) or one that is not JSON."""
    path = Path(path)
    check(path.is_file(), missing or f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not JSON ({e})") from None


def no_space(error: BaseException) -> OSError | None:
    """The "no space left" / "quota exceeded" ``OSError`` that is ``error``, its cause or its context, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__cause__ or error.__context__
    return None


def run_holding(path: str | os.PathLike) -> Path | None:
    """The run directory that ``path`` is (or lies inside), links resolved, or None."""
    for folder in (Path(path).resolve(), *Path(path).resolve().parents):
        if (folder / RUN_FILE).is_file():
            return folder
    return None


def check_out_dir(path: str | os.PathLike, flag: str = "--out-dir", own_run: bool = False) -> Path:
    """``path`` can be (or become) a folder we may write in: not a file, no name too long, no broken or looping
    link, the nearest existing ancestor writable, and (unless ``own_run``: the run directory itself) not inside
    a run directory (only the run itself writes there). Nothing is created; ``UsageError`` otherwise."""
    path = Path(path)
    try:
        limit = os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for part in path.parts:
        size = len(os.fsencode(part))
        check(size <= limit, f"{flag} {str(path)[:60]}...: a name in it is {size} bytes long; file names may be "
                             f"at most {limit} bytes here")
    probe = path
    while True:
        try:
            probe.stat()
            break
        except (FileNotFoundError, NotADirectoryError):  # not there (yet), or under a file: look further up
            check(not os.path.islink(probe), f"{flag} {path}: {probe} is a symbolic link to nothing; remove it or "
                                             "choose another folder")
        except OSError as e:  # a link loop (ELOOP), a name too long, a file where a folder should be
            raise UsageError(f"{flag} {path}: {probe}: {e.strerror}; expected a folder path") from None
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == path:
        check(path.is_dir(), f"{flag} {path} is a file; expected a folder")
    check(probe.is_dir(), f"{flag} {path}: {probe} is a file, not a folder; expected a folder path")
    check(os.access(probe, os.W_OK | os.X_OK), f"{flag} {path}: {probe} is not writable; choose a writable folder")
    run = None if own_run else run_holding(path)
    check(run is None, f"{flag} {path} is inside the run directory {run} (it holds {RUN_FILE}); writing there "
                       "would change that run; choose a folder outside it")
    return path
