"""The errors and checks every module uses; a leaf module (it imports nothing from the project), so modules that
report input problems need not import ``common.cli`` (whose ``run`` reports these errors)."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import unicodedata
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


class Diverged(Exception):
    """The run stopped on a non-finite loss or parameters: reported as one line, exit status 3."""


class RunBusy(UsageError):
    """The run directory is being written by another live process (its lock is held): one line, exit status 4, so
    a job runner tells "running elsewhere" from a failure (``common.jobs``)."""


EXIT_USAGE, EXIT_DIVERGED, EXIT_BUSY = 2, 3, 4
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


def check_no_nul(path: str | os.PathLike, line: int, fields: list[str]) -> None:
    """A data file's row holds no NUL character (a binary or truncated file; text readers would take it as text)."""
    check(not any("\0" in f for f in fields), f"{path}:{line}: a NUL byte in the row; expected a text file (is it "
                                              "binary, or cut short by a failed copy?)")


JSON_MAX_BYTES = 64 << 20  # an input file of a grid or a plot: a selection, an arm list, a results table


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | os.PathLike, missing: str | None = None, *, allow_nan: bool = False,
              max_bytes: int = JSON_MAX_BYTES) -> object:
    """The JSON in ``path``; a one-line ``UsageError`` for a missing file (message ``missing``), one larger than
    ``max_bytes``, one that is not UTF-8 JSON, is nested too deeply to read or (unless ``allow_nan``: a record
    the project wrote, where NaN marks an undefined statistic) holds NaN / Infinity, which JSON has not."""
    path = Path(path)
    check(path.is_file(), missing or f"{path}: no such file")
    size = path.stat().st_size
    check(size <= max_bytes, f"{path}: {size:,} bytes, more than the {max_bytes:,} a JSON input may hold")
    text = read_text(path, "a JSON file")
    try:
        return json.loads(text, parse_constant=None if allow_nan else _no_constant)
    except ValueError as e:  # json.JSONDecodeError is one
        raise UsageError(f"{path}: not JSON ({first_line(e)})") from None
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to be read as JSON") from None


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
    """``path`` can be (or become) a folder we may write in: not empty (an empty path would write into the current
    folder, never what a user means), not a file, no name too long, no broken or looping link, the nearest existing
    ancestor writable (``_writable``), and (unless ``own_run``: the run directory itself) not inside a run directory
    (only the run itself writes there). Nothing is left behind; ``UsageError`` otherwise."""
    check(os.fspath(path) != "", f"{flag} is an empty path; expected a folder (. for the current one)")
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
        check(path.is_dir(), f"{flag} {path} is {_what(path)}; expected a folder")
    check(probe.is_dir(), f"{flag} {path}: {probe} is {_what(probe)}, not a folder; expected a folder path")
    check(_writable(probe, try_it=not (own_run and probe == path)),
          f"{flag} {path}: {probe} is not writable; choose a writable folder")
    run = None if own_run else run_holding(path)
    check(run is None, f"{flag} {path} is inside the run directory {run} (it holds {RUN_FILE}); writing there "
                       "would change that run; choose a folder outside it")
    return path


def _what(path: Path) -> str:
    return "a file" if path.is_file() else "not a folder (a device or other special file)"


def _writable(folder: Path, try_it: bool = True) -> bool:
    """Whether we can create in ``folder``. Permission bits do not bind root, and /proc or a read-only mount
    refuses what they allow, so (with ``try_it``) a folder is made in it and removed at once; never inside a run
    directory, whose entries another run's ``--overwrite`` may be deleting (``os.access`` there)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    if not try_it:
        return True
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fedlab-write-probe-", dir=folder))
    except OSError:
        return False
    return True


# control characters (newline, tab, ...), format characters (the bidi overrides U+202E ..., zero-width ones), line
# and paragraph separators, surrogates and unassigned code points: a folder name holding one misleads every listing
_UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Cn")


def check_run_name(name: str) -> None:
    """A run name (given, or made from flags) is one plain folder name: not empty, '.' or '..', no path separator,
    no character of ``_UNSAFE``; else one line naming the first offending character."""
    bad = next((c for c in name if c in "/\\" or unicodedata.category(c) in _UNSAFE), None)
    what = f"U+{ord(bad):04X} {unicodedata.name(bad, 'a control character')}" if bad else None
    check(bool(name) and name not in (".", "..") and bad is None,
          f"--run-name {name!r} is not a plain folder name" + (f" (it holds {what})" if what else "")
          + "; expected one folder name without path separators, control or bidi characters")
