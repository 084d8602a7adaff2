"""Seeding: one global seed, plus independent random streams keyed by (seed, round, client), so a client's
randomness does not depend on which process trains it or in what order: ``client_generator`` for explicit
sampling, ``client_rng`` around code using the global RNG (dropout).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def stream_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and the keys (their order matters), stable across processes and runs."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def client_generator(seed: int, round_idx: int, client: int, device: str | torch.device = "cpu",
                     purpose: str = "batches") -> torch.Generator:
    """A ``torch.Generator`` for one client in one round; ``purpose`` separates independent uses."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose, round_idx, client))


def numpy_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A NumPy generator keyed like ``stream_seed`` (for sharding, client sampling)."""
    return np.random.default_rng(stream_seed(seed, *keys))


def get_rng_state() -> dict:
    """All global RNG states as plain values and tensors, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def client_rng(seed: int, round_idx: int, client: int, purpose: str = "dropout"):
    """Run a block with the global torch RNG set to the client's stream, then restore the outer state."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        # the generators this process draws from (CPU, and its own GPU), not torch.manual_seed: that also
        # re-seeds every other accelerator type and costs about a millisecond per client
        s = stream_seed(seed, purpose, round_idx, client)
        torch.default_generator.manual_seed(s)
        if devices:
            torch.cuda.manual_seed(s)
        yield
