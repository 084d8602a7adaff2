"""What a run leaves for other tools: ``<run>/model/``, loadable without this project (``from_pretrained``, or
``model.safetensors`` + ``config.json`` for a model built here), with ``fedlab.json`` naming the run and its
headline metrics; a LoRA adapter's base model is recorded relative to the adapter when both lie in one run
directory, so they move together.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from common import pretrained
from common.checkpoint import atomic_path, atomic_write_json, give_usual_permissions
from common.errors import run_holding

MODEL_DIR = "model"
CARD_FILE = "fedlab.json"
TENSORS_FILE = "model.safetensors"


def _save_pretrained(model, tokenizer, folder) -> None:
    """``save_pretrained`` of the model (a compile wrapper's ``_orig_mod``) and tokenizer, no progress bars."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        getattr(model, "_orig_mod", model).save_pretrained(str(folder))
    finally:
        if was:
            hf_logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    give_usual_permissions(folder)


def save_model_dir(run_path: str | os.PathLike, model, tokenizer=None, *, info: dict | None = None,
                   name: str = MODEL_DIR) -> Path:
    """``save_pretrained`` into ``<run_path>/<name>/`` (returned), ``info`` (headline metrics) to fedlab.json."""
    out = Path(run_path) / name
    _save_pretrained(model, tokenizer, out)
    atomic_write_json(out / CARD_FILE, {"run": Path(run_path).name, "format": "transformers",
                                        "class": type(getattr(model, "_orig_mod", model)).__name__, **(info or {})})
    return out


def merged(model):
    """A copy of a peft model with its LoRA update merged into the base weights; other models as they are."""
    model = getattr(model, "_orig_mod", model)
    return copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_adapter_dir(run_path: str | os.PathLike, peft_model, tokenizer=None, *, base: str | None = None,
                     base_model=None, info: dict | None = None, name: str = "adapter") -> Path:
    """A peft model's adapter in ``<run>/<name>/``, ``base`` (hub name or folder) as its ``base_model_name_or_path``;
    a base built in code is given as ``base_model`` (without adapters) and saved to ``<run>/base_model/``."""
    run_path = Path(run_path)
    out = run_path / name
    if base_model is not None:
        base = str(run_path / "base_model")
        _save_pretrained(base_model, tokenizer, base)
    _save_pretrained(peft_model, tokenizer, out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = relative_base(out, base)
    atomic_write_json(cfg_path, cfg)
    atomic_write_json(out / CARD_FILE, {"run": run_path.name, "format": "peft", **(info or {})})
    return out


def save_tensors_dir(run_path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict, *,
                     info: dict | None = None, name: str = MODEL_DIR, extra: dict[str, dict] | None = None) -> Path:
    """Named tensors in ``<run>/<name>/model.safetensors``, ``config.json`` and the ``extra`` JSON files."""
    from safetensors.torch import save_file

    out = Path(run_path) / name
    with atomic_path(out / TENSORS_FILE) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "pt"})
    for file, content in {"config.json": config, **(extra or {})}.items():
        atomic_write_json(out / file, content)
    atomic_write_json(out / CARD_FILE, {"run": Path(run_path).name, "format": "safetensors", **(info or {})})
    return out


def load_tensors_dir(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(named tensors, config) written by ``save_tensors_dir``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    pretrained.check_folder(folder)  # JSON objects, safetensors headers that fit their files
    with pretrained.loading(folder / TENSORS_FILE):
        tensors = load_file(folder / TENSORS_FILE)
    return tensors, pretrained.json_object(folder / "config.json")


def relative_base(adapter_dir: str | os.PathLike, base: str | None) -> str | None:
    """What an adapter records as its base: a folder inside the adapter's run directory relative to the adapter
    folder (peft would resolve it against the working directory), another folder absolute, a hub name as is."""
    if not base or not Path(base).is_dir():
        return base
    base_path, root = Path(base).resolve(), run_holding(adapter_dir)
    if root is not None and (base_path == root or root in base_path.parents):
        return os.path.relpath(base_path, Path(adapter_dir).resolve())
    return str(base_path)


def resolve_base(adapter_dir: str | os.PathLike, recorded: str | None) -> str | None:
    """The base model an adapter names: a relative path is taken from the adapter folder when that exists."""
    if not recorded or Path(recorded).is_absolute():
        return recorded
    candidate = Path(adapter_dir) / recorded
    return str(candidate.resolve()) if candidate.exists() else recorded


def named_state(names: Iterable[str], tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: CPU copy}`` for a parameter list and its names (``common.params.named_trainable`` order)."""
    names = list(names)
    if len(names) != len(tensors):
        raise ValueError(f"{len(names)} names for {len(tensors)} tensors")
    return {n: t.detach().to("cpu", copy=True) for n, t in zip(names, tensors)}


def tensors_from_state(state: Any, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """A parameter list from ``named_state``'s dict (in ``names`` order, else insertion order) or a plain list."""
    if isinstance(state, dict):
        if names is None:
            return list(state.values())
        missing = [n for n in names if n not in state]
        if missing:
            raise KeyError(f"checkpoint has no tensor for {missing[:3]}")
        return [state[n] for n in names]
    return list(state)
