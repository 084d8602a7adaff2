"""Parameter snapshots and deltas of chosen tensors, every layer, saved as ``.npz`` for the plots.

Keys are ``<who>/layer<i>/<tensor>``: ``server/layer1/mixer.in_proj.weight``, ``server_delta/layer1/...``
(change since the previous snapshot), ``client3_delta/layer0/...`` (a client's final parameters minus the global
ones it started from). The source kept only the last layer.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from common import cli, distributed
from common.checkpoint import atomic_path

_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.(.+)$")


def select(named_params: list[tuple[str, torch.Tensor]], patterns: str) -> list[tuple[int, str]]:
    """(position in the parameter list, key) of every layer tensor whose name ends with one of the
    comma-separated ``patterns``; e.g. 'mixer.in_proj.weight,mixer.out_proj.weight'."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    out = [(i, f"layer{m.group(1)}/{m.group(2)}") for i, (name, _) in enumerate(named_params)
           if (m := _LAYER.match(name)) and any(m.group(2).endswith(w) for w in wanted)]
    cli.check(bool(out), f"--delta-tensors {patterns!r} matches no layer tensor; expected names such as "
                         f"mixer.in_proj.weight, mixer.out_proj.weight, mixer.conv1d.weight")
    return out


class Snapshots:
    """Collects the chosen tensors' arrays for one snapshot (on evaluation rounds only) and writes
    ``<folder>/<tag>.npz``."""

    def __init__(self, folder: Path, chosen: list[tuple[int, str]]):
        self.folder, self.chosen = Path(folder), chosen
        self.arrays: dict[str, np.ndarray] = {}
        self.previous: dict[str, np.ndarray] | None = None

    def add(self, who: str, tensors, base=None) -> None:
        """Record ``tensors`` (a full parameter list) as ``who``; with ``base``, the difference."""
        for i, key in self.chosen:
            t = tensors[i].detach().float()
            if base is not None:
                t = t - base[i].detach().float()
            # a copy: on CPU .float().numpy() would be a view of the live parameter
            self.arrays[f"{who}/{key}"] = t.cpu().numpy().copy()

    def write_server(self, tensors, tag: str) -> None:
        """Add the global parameters and their change since the previous server snapshot, and write the snapshot."""
        self.add("server", tensors)
        current = {k: v for k, v in self.arrays.items() if k.startswith("server/")}
        if self.previous is not None:
            for k, v in current.items():
                self.arrays["server_delta/" + k[len("server/"):]] = v - self.previous[k]
        self.previous = current
        self.write(tag)

    def gather(self) -> None:
        """Under torchrun: bring the client arrays every rank recorded into rank 0's (the only writer)."""
        mine = {k: v for k, v in self.arrays.items() if k.startswith("client")}
        parts = distributed.all_gather_object(mine)
        if distributed.is_main():
            for part in parts:
                self.arrays.update(part)
        else:
            for k in mine:
                del self.arrays[k]

    def write(self, tag: str) -> None:
        with atomic_path(self.folder / f"{tag}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.arrays)
        self.arrays = {}

    def state_dict(self) -> dict:
        """The previous server snapshot as tensors (a checkpoint then loads with ``weights_only=True``)."""
        prev = None if self.previous is None else {k: torch.from_numpy(v) for k, v in self.previous.items()}
        return {"previous": prev}

    def load_state_dict(self, state: dict) -> None:
        prev = state["previous"]  # tensors: the checkpoint loads with weights_only=True
        self.previous = None if prev is None else {k: v.numpy() for k, v in prev.items()}
