"""The shared check of the scripts' bad-input tests: a usage error ends in one line on stderr, exit 2."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from common import cli

# llm_noniid/train.py --quick's budget before it was long enough to learn: the tests that check mechanics, not
# learning, pin it after --quick (later flags override it)
LLM_SMOKE = ["--num-rounds", "3", "--max-local-steps", "3", "--learning-rate", "0.5"]


def one_line_error(main, argv, capsys, code: int = 2) -> str:
    """Run ``main(argv)`` the way a script's ``__main__`` does; assert exit ``code`` (2: a usage error; 4: the run
    directory is another live run's) and one line without a traceback; return that line."""
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@contextlib.contextmanager
def umask(mask: int = 0o022):
    """Run a block under ``mask`` (the usual 022 of a user's shell), then restore the test process's."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def narrow_files(root) -> list[str]:
    """Files and folders under ``root`` whose mode is not what the umask 022 gives (0644 files, 0755
    folders): the 0600 that temp files and safetensors carry, say."""
    return [f"{p.relative_to(root)} {oct(p.stat().st_mode & 0o777)}" for p in Path(root).rglob("*")
            if not p.is_symlink() and p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)]


def the_run(folder) -> Path:
    """The one run directory (a folder holding args.json) in ``folder``, which may also hold the default
    ``<out-dir>/cache`` a run derives when no cache is named."""
    runs = [p for p in Path(folder).iterdir() if (p / "args.json").is_file()]
    assert len(runs) == 1, f"expected one run directory in {folder}, found {[p.name for p in runs]}"
    return runs[0]
