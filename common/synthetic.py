"""Embedded datasets in their real distribution formats, generated offline and deterministically in seconds.

The real readers are exercised on them: WikiText raw files and AG News CSV (``common.synthetic_text``, a
topic-structured text source whose optimal perplexity is known), GLUE TSV for SST-2, MRPC and STS-B
(``common.synthetic_glue``) and the CIFAR-100 python pickles (``common.synthetic_cifar``).
``ensure(kind)`` generates a dataset once into a cache folder and returns it; this is what scripts call.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from common import caches, synthetic_cifar, synthetic_glue, synthetic_text
from common.checkpoint import give_usual_permissions
from common.cli import UsageError, check, check_out_dir

FORMAT_VERSION = 1      # part of every cache key, with a hash of the generators' code
_GENERATORS = (synthetic_text, synthetic_glue, synthetic_cifar)

KINDS = {"wikitext": synthetic_text.write_wikitext, "ag_news": synthetic_text.write_ag_news,
         "cifar100": synthetic_cifar.write_cifar100,
         **{f"glue-{t}": functools.partial(synthetic_glue.write_glue, task=t) for t in synthetic_glue.GLUE_TASKS}}


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of the generators' source files: an edited generator never serves data cached by an older one."""
    h = hashlib.sha256()
    for path in (__file__, *(m.__file__ for m in _GENERATORS)):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]


default_root = caches.data_root  # $FEDLAB_DATA, else ~/.cache/fedlab/synthetic


def ensure(kind: str, root=None, **params) -> Path:
    """Generate ``kind`` (``KINDS``) once into ``root/<kind>-<hash of params and code>`` and return that folder;
    ``params`` go to the writer (sizes, seed). Written into a temporary sibling folder and renamed into place:
    concurrent processes never see half a dataset, and the loser of a race discards its copy."""
    check(kind in KINDS, f"synthetic dataset {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    try:
        inspect.signature(KINDS[kind]).bind("dir", **params)
    except TypeError as e:
        raise UsageError(f"synthetic dataset {kind!r}: bad parameters {sorted(params)} ({e})") from None
    key = json.dumps({"kind": kind, "version": FORMAT_VERSION, "code": _code_digest(), **params},
                     sort_keys=True, default=str)
    root = Path(root) if root is not None else default_root()
    final = root / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (final / ".complete").is_file():
        return final
    check_out_dir(root, "the embedded-data folder" if root != default_root() else
                  "the embedded-data folder ($FEDLAB_DATA, else ~/.cache/fedlab/synthetic)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-tmp-"))
    try:
        KINDS[kind](tmp, **params)
        (tmp / ".complete").write_text(key + "\n")
        give_usual_permissions(tmp)  # mkdtemp makes a 0700 folder: the shared cache must be readable
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():     # a stale partial folder, not a finished rival copy
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
