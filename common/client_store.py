"""Per-client state (optimizer moments under ``--client-opt-state persist``, SCAFFOLD's c_i, FedDyn's g_k) on
disk, so a run's memory follows the clients of a round, not every client it has seen.

A ``ClientStore`` holds named ``Table``s; a table holds one row per client: a fixed list of tensors (its
schema: names, shapes, dtypes; fixed by the first ``put``). ``get(k)`` reads client k's row into RAM (a fresh
copy, None for a client never written), ``put(k, tensors)`` writes it, ``contains(k)`` says whether one exists.
Without a folder (a warm-up run, a test) the rows stay in memory; ``open(folder, ...)`` puts them on disk.

On disk: one raw file per table (``<folder>/<name>.rows``), client k's two slots at byte offsets
(2k + b) x row size (a sparse file: only the slots written take disk), read and written with pread / pwrite.
Not memory-mapped: pages of a mapped file count in the process's resident memory once touched, the page cache
does not; and not safetensors shards, which would rewrite a shard to change one row.

Checkpoints: every client has two slots; the checkpoint names the committed one (``state_dict``: clients and
slot bits, 9 bytes per client, never a row; ``commit()`` once the checkpoint holding it is on disk). A ``put``
writes the slot the last checkpoint does NOT name, so a run resumed from a checkpoint reads exactly its rows,
whenever the process died after it: mid-row, mid-round or mid-checkpoint (the checkpoint file is replaced
atomically, and the slots it names are not written until a newer one is). A save rewrites nothing: the rows
are written once, when their client trains; ``state_dict`` fsyncs them first.

torchrun: every rank opens the same files (the run directory, on a filesystem every rank sees) and reads and
writes only the rows of the clients it trains. After a round each rank tells the others which clients it wrote
(``written`` -> the engine's all-gather -> ``mark``), so every rank's index, and rank 0's checkpoint, agree.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

ALIGN = 64          # each tensor of a row starts at a multiple of this (views of any dtype)
PAGE = 4096         # rows are whole pages: a slot never shares a page with another
SUFFIX = ".rows"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"client store: unknown dtype {name!r}")
    return dtype


class Table:
    """One named per-client state of a ``ClientStore`` (see the module docstring)."""

    def __init__(self, store: ClientStore, name: str):
        self.store, self.name = store, name
        self.schema: list[tuple[str, tuple[int, ...], str]] | None = None
        self.rows: dict[int, list[torch.Tensor]] = {}  # in memory (no folder)
        self.live: dict[int, int] = {}                 # on disk: client -> slot holding its newest row
        self.committed: dict[int, int] = {}            # client -> slot the last checkpoint names
        self._written: list[int] = []                  # clients put since ``written()`` (torchrun)
        self._fd: int | None = None
        self._dirty = False

    # -- the layout of a row ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [] if self.schema is None else [n for n, _, _ in self.schema]

    def _set_schema(self, tensors: Sequence[torch.Tensor], names: Sequence[str] | None) -> None:
        names = [str(i) for i in range(len(tensors))] if names is None else list(names)
        if len(names) != len(tensors):
            raise ValueError(f"client store {self.name}: {len(tensors)} tensors but {len(names)} names")
        schema = [(n, tuple(t.shape), str(t.dtype)) for n, t in zip(names, tensors)]
        if self.schema is None:
            self.schema = schema
            self._layout()
        elif schema != self.schema:
            diff = next(((a, b) for a, b in zip(schema, self.schema) if a != b), (len(schema), len(self.schema)))
            raise ValueError(f"client store {self.name}: a row of another layout than the table's first "
                             f"(the first difference: {diff[0]} vs {diff[1]})")

    def _layout(self) -> None:
        self._offsets, pos = [], 0
        for _, shape, dtype in self.schema:
            self._offsets.append(pos)
            nbytes = math.prod(shape) * _dtype(dtype).itemsize
            pos += -(-nbytes // ALIGN) * ALIGN
        self.row_bytes = max(PAGE, -(-pos // PAGE) * PAGE)

    # -- rows -----------------------------------------------------------------------------------------------
    def contains(self, k: int) -> bool:
        return int(k) in (self.live if self.store.folder is not None else self.rows)

    def __len__(self) -> int:
        return len(self.live if self.store.folder is not None else self.rows)

    def clients(self) -> list[int]:
        return sorted(self.live if self.store.folder is not None else self.rows)

    def get(self, k: int) -> list[torch.Tensor] | None:
        """Client k's row (tensors in RAM, on the CPU when on disk; the caller may change them), or None."""
        k = int(k)
        if self.store.folder is None:
            row = self.rows.get(k)
            return None if row is None else [t.clone() for t in row]
        if k not in self.live:
            return None
        buf = torch.empty(self.row_bytes, dtype=torch.uint8)
        got = os.preadv(self._file(), [buf.numpy()], self._offset(k, self.live[k]))
        if got != self.row_bytes:
            raise OSError(f"client store {self.name}: client {k}'s row is truncated ({got} of {self.row_bytes} "
                          f"bytes) in {self.path}")
        return [buf[o:o + math.prod(shape) * _dtype(dt).itemsize].view(_dtype(dt)).reshape(shape)
                for o, (_, shape, dt) in zip(self._offsets, self.schema)]

    @torch.no_grad()
    def put(self, k: int, tensors: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> None:
        """Client k's row is now ``tensors`` (copied; ``names``: the schema's names, checked against it)."""
        k = int(k)
        self._set_schema(tensors, names)
        if self.store.folder is None:
            self.rows[k] = [t.detach().clone() for t in tensors]
            return
        buf = torch.zeros(self.row_bytes, dtype=torch.uint8)
        for o, t in zip(self._offsets, tensors):
            flat = t.detach().reshape(-1).contiguous().cpu().view(torch.uint8)
            buf[o:o + flat.numel()].copy_(flat)
        slot = self._slot(k)
        self.store.before_write(self, k)
        done = os.pwritev(self._file(), [buf.numpy()], self._offset(k, slot))
        if done != self.row_bytes:
            raise OSError(f"client store {self.name}: wrote {done} of {self.row_bytes} bytes to {self.path}")
        self.live[k], self._dirty = slot, True
        self._written.append(k)

    def _slot(self, k: int) -> int:
        """The slot k's next row goes to: never the committed one (0 for a client never written)."""
        if k in self.live and self.live[k] != self.committed.get(k):
            return self.live[k]
        return 1 - self.committed.get(k, 1)

    def _offset(self, k: int, slot: int) -> int:
        return (2 * k + slot) * self.row_bytes

    @property
    def path(self) -> Path:
        return Path(self.store.folder) / f"{self.name}{SUFFIX}"

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return self._fd

    # -- checkpoints and ranks --------------------------------------------------------------------------------
    def sync(self) -> None:
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False

    def state_dict(self) -> dict:
        if self.store.folder is None:
            ks = sorted(self.rows)
            return {"schema": self.schema, "clients": ks, "rows": [self.rows[k] for k in ks]}
        ks = sorted(self.live)
        return {"schema": self.schema, "clients": torch.tensor(ks, dtype=torch.int64),
                "slots": torch.tensor([self.live[k] for k in ks], dtype=torch.uint8)}

    def load_state_dict(self, state: dict) -> None:
        self.schema = [(str(n), tuple(int(s) for s in shape), str(dt)) for n, shape, dt in state["schema"]] \
            if state.get("schema") is not None else None
        if self.schema is not None:
            self._layout()
        ks = [int(k) for k in state["clients"]]
        if "rows" in state:  # a row-holding state (a store in memory)
            rows = dict(zip(ks, state["rows"]))
            if self.store.folder is None:
                self.rows = {k: [t.clone() for t in r] for k, r in rows.items()}
            else:
                for k, r in rows.items():
                    self.put(k, r, self.names)
            return
        if self.store.folder is None:
            raise ValueError(f"client store {self.name}: the state names rows on disk, but the store has no folder")
        self.committed = dict(zip(ks, (int(s) for s in state["slots"])))
        self.live = dict(self.committed)

    def commit(self) -> None:
        self.committed = dict(self.live)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ClientStore:
    """Named per-client tables (``table``), in memory until ``open`` gives them a folder."""

    def __init__(self):
        self.folder: Path | None = None
        self.tables: dict[str, Table] = {}

    def before_write(self, table: Table, k: int) -> None:
        """Called before every row written to disk (tests: a process killed at a chosen write)."""

    def table(self, name: str) -> Table:
        if name not in self.tables:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"client store: table name {name!r} is not a plain word")
            self.tables[name] = Table(self, name)
        return self.tables[name]

    def open(self, folder: str | os.PathLike, state: dict | None = None, clean: bool = True) -> None:
        """Keep the rows in ``folder`` from now on: the rows of ``state`` (a checkpoint's ``state_dict``; None
        for a fresh run, whose leftover files ``clean`` removes). Rows already in memory move there."""
        folder = Path(folder)
        if clean and state is None and folder.is_dir():
            for f in folder.glob(f"*{SUFFIX}"):
                f.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        held = {name: t.state_dict() for name, t in self.tables.items() if t.rows}
        self.folder = folder
        for t in self.tables.values():
            t.rows = {}
        if state is not None:
            self.load_state_dict(state)
        for name, s in held.items():
            self.tables[name].load_state_dict(s)

    def state_dict(self) -> dict:
        """Each table's schema and committed rows (on disk: which slot of each client; the rows fsync'ed)."""
        self.sync()
        return {"version": 1, "tables": {name: t.state_dict() for name, t in self.tables.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise ValueError(f"client store state version {state.get('version')!r}; this code reads version 1")
        for name, s in state["tables"].items():
            self.table(name).load_state_dict(s)

    def commit(self) -> None:
        """The checkpoint holding the last ``state_dict`` is on disk: its slots are the ones to keep now."""
        for t in self.tables.values():
            t.commit()

    def sync(self) -> None:
        for t in self.tables.values():
            t.sync()

    def written(self) -> dict:
        """{table: (schema, clients put since the last call)}: what this rank tells the others after a round."""
        out = {name: (t.schema, t._written) for name, t in self.tables.items() if t._written}
        for t in self.tables.values():
            t._written = []
        return out

    def mark(self, parts: Sequence[dict]) -> None:
        """The other ranks' ``written()``: their clients' newest rows are in the slots they chose (the rule
        of ``Table._slot``, which every rank applies alike)."""
        for part in parts:
            for name, (schema, ks) in part.items():
                t = self.table(name)
                if t.schema is None and schema is not None:
                    t.schema = [tuple(e) for e in schema]
                    t._layout()
                for k in ks:
                    t.live[int(k)] = t._slot(int(k))

    def close(self) -> None:
        for t in self.tables.values():
            t.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass


def committed_rows(folder: str | os.PathLike, state: dict, name: str) -> dict[int, list[torch.Tensor]]:
    """{client: row} of table ``name`` as a checkpoint's client-store ``state`` names them, read from ``folder``
    (the run directory's store folder): what a run resumed from that checkpoint would read."""
    store = ClientStore()
    store.open(folder, state, clean=False)
    table = store.table(name)
    try:
        return {k: [t.clone() for t in table.get(k)] for k in table.clients()}
    finally:
        store.close()
