"""Atomic file writes and checkpoint files.

Atomic writes go to a fsync'ed temporary file that then replaces the target: a crash leaves the old or new file.

Checkpoints are ``torch.save`` archives of ``{"format": "fedlab-checkpoint", "version": 1, "kind": kind,
"state": state}``; ``kind`` names the writing script (e.g. ``"mamba_fl/fed_fisher"``), so one script never
resumes from another's state. They hold only tensors and plain values and load with ``weights_only=True``;
before that, ``load_checkpoint`` checks the zip archive, reads our header from the pickle opcodes without
executing them, and refuses a file naming any global (a crafted pickle) before unpickling. An unusable file is
a ``CheckpointError`` (a ``UsageError``: one line, exit status 2). Torch is imported by the checkpoint functions
only: the atomic writes and the JSON helpers also serve parsers, grids and plots, which never load it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pickletools
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from common.errors import UsageError

FORMAT = "fedlab-checkpoint"
VERSION = 1
_HEADER_KEYS = ("format", "version", "kind")


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: missing, truncated, foreign, or written by another script."""


def usual_mode(executable: bool = False) -> int:
    """The mode ``open()`` gives a new file under the current umask, for files written through 0600 temp files."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if executable else 0o666) & ~umask


def give_usual_permissions(folder: str | os.PathLike) -> None:
    """Every file and folder under ``folder`` (and itself) gets ``usual_mode``."""
    folder = Path(folder)
    for p in [folder, *folder.rglob("*")]:
        want = usual_mode(executable=p.is_dir())
        if not p.is_symlink() and p.stat().st_mode & 0o777 != want:
            os.chmod(p, want)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to ``path``; after the block it is fsync'ed, given ``usual_mode`` and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename reaches the disk too (Windows cannot open directories)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Run ``write(f)`` on a temp file next to ``path``, fsync it, then rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` default: tensors and NumPy values become numbers or lists, paths and the rest strings."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")  # a tensor or an array exists once they loaded
    if torch is not None and torch.is_tensor(obj):
        return obj.item() if obj.numel() == 1 and obj.dim() == 0 else obj.detach().cpu().tolist()
    if np is not None and isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)  # Path, torch.device, torch.dtype, ...


def round_trip_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists; tensors, arrays and paths as ``to_jsonable``)."""
    return json.loads(json.dumps(obj, default=to_jsonable))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (tensors, arrays and paths converted) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=to_jsonable) + "\n")


_PLAIN = (str, int, float, bool, complex, bytes, type(None))


def _check_plain(value: Any, where: str = "state") -> None:
    """Refuse (when saving) anything but tensors and plain values: it would not load with ``weights_only``."""
    import torch

    if torch.is_tensor(value) or isinstance(value, (*_PLAIN, torch.Size, torch.dtype, torch.device)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"checkpoint {where} is a {type(value).__module__}.{type(value).__qualname__}; "
                        "checkpoints hold only tensors and plain Python values (convert it first)")


def save_checkpoint(path: str | os.PathLike, state: dict, kind: str) -> Path:
    """``torch.save`` ``state`` (tensors and plain values) with our header, atomically."""
    import torch

    _check_plain(state)
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "state": state}
    return _atomic_write(path, lambda f: torch.save(payload, f))


def _read_header(pkl: bytes) -> dict:
    """The first three key/value pairs of the pickled top-level dict, read from opcodes, nothing executed."""
    values: list[Any] = []
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _ in pickletools.genops(io.BytesIO(pkl)):
        if op.name in ("PROTO", "FRAME", "EMPTY_DICT", "MARK"):
            continue
        if op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = last
            continue
        if op.name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(int(arg))
        elif isinstance(arg, (str, int)) and op.name not in ("GLOBAL", "STACK_GLOBAL", "INST"):
            last = arg
        else:  # anything else (a global, a nested object) before the header is complete: not ours
            break
        values.append(last)
        if len(values) == 2 * len(_HEADER_KEYS):
            break
    return dict(zip(values[0::2], values[1::2]))


def _check_file(path: Path, expect_kind: str) -> None:
    """Verify, without unpickling, that ``path`` is a complete fedlab checkpoint of ``expect_kind``."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a fedlab checkpoint (not a torch.save archive); "
                              "point --out-dir/--run-name at a run directory written by this project")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint")
            header = _read_header(z.read(names[0]))  # z.read checks the CRC
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); the run was "
                              "probably killed while saving: delete it and rerun without --resume") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a fedlab checkpoint (no '{FORMAT}' header)")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {header.get('version')!r}; "
                              f"this code reads version {VERSION}")
    if header.get("kind") != expect_kind:
        raise CheckpointError(f"{path} is a checkpoint of {header.get('kind')!r}, not of {expect_kind!r}; "
                              "use another --run-name or --out-dir")


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """One line for a file torch cannot read: the telling line of ``e`` (torch's errors span paragraphs)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return CheckpointError(f"{path} cannot be read ({type(e).__name__}: {(named or lines or [''])[0]}); "
                           "delete it and rerun without --resume")


def load_checkpoint(path: str | os.PathLike, kind: str) -> dict:
    """The ``state`` saved by ``save_checkpoint(path, state, kind)``; ``CheckpointError`` if unusable."""
    import torch

    path = Path(path)
    _check_file(path, kind)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads opcodes, runs nothing
    except Exception as e:  # noqa: BLE001 -- a pickle the scanner cannot read is unusable too
        raise _unreadable(path, e) from None
    if unsafe:
        raise CheckpointError(f"{path} asks to import {', '.join(sorted(unsafe))}: a fedlab checkpoint holds "
                              "only tensors and plain values; refused without loading it (was it crafted?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure means the file is unusable
        raise _unreadable(path, e) from None
    if not isinstance(payload, dict) or "state" not in payload:
        raise CheckpointError(f"{path} is not a fedlab checkpoint (no state)")
    return payload["state"]


def settings_key(settings: dict) -> str:
    """A 16-hex-digit key of a JSON-able settings dict (key order does not matter; other values by ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def built_once(root: str | os.PathLike, key: str, ready: str, build: Callable[[Path], None]) -> Path:
    """``<root>/<key>``, made by ``build(<root>/<key>)`` unless it holds ``ready``; a concurrent caller waits."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / ready).is_file():
            build(final)
    return final
