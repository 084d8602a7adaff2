"""Where derived data go when no flag names the folder: the cache of tokenizers and token streams and the embedded
datasets' folder. A leaf module (``common.cli`` checks these folders at parse time, before anything is written)."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FEDLAB_CACHE`` or ``~/.cache/fedlab``."""
    return Path(os.environ.get("FEDLAB_CACHE", Path.home() / ".cache" / "fedlab"))


def derived_cache_dir(cache_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Where tokenizers and token streams derived from the user's text go: ``--cache-dir``, else
    ``$FEDLAB_CACHE``, else ``<out-dir>/cache`` beside the runs (not a hidden home folder the user did not
    name), else ``default_cache_dir()``."""
    if cache_dir or os.environ.get("FEDLAB_CACHE"):
        return Path(cache_dir or os.environ["FEDLAB_CACHE"])
    return Path(out_dir) / "cache" if out_dir else default_cache_dir()


def derived_cache_name(out_dir: str | os.PathLike | None = None) -> str:
    """How messages name ``derived_cache_dir(None, out_dir)``'s source."""
    if os.environ.get("FEDLAB_CACHE"):
        return "$FEDLAB_CACHE"
    return "the cache folder <out-dir>/cache" if out_dir else "the cache folder ~/.cache/fedlab"


def data_root() -> Path:
    """The embedded datasets' folder: $FEDLAB_DATA, else ~/.cache/fedlab/synthetic."""
    return Path(os.environ.get("FEDLAB_DATA") or Path.home() / ".cache" / "fedlab" / "synthetic")
