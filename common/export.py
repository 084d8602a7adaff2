"""What a run leaves for other tools: ``<run>/model/``, loadable without this project.

* ``save_model_dir(run_path, model, tokenizer)`` -- a Hugging Face model (or a peft model: then the folder
  holds the adapter) written with ``save_pretrained``, plus its tokenizer, in ``<run>/model/``, so
  ``AutoModelForCausalLM.from_pretrained("<run>/model")`` (or ``AutoModelForSequenceClassification``,
  ``PeftModel.from_pretrained(base, "<run>/model")``) loads it directly. ``fedlab.json`` beside it records
  which script and run wrote it and the run's headline metrics.
* ``save_state_dict_dir(run_path, state_dict, config)`` -- for models that are not ``transformers`` classes
  (the ViT): named tensors in ``model.pt`` (``torch.load(weights_only=True)`` reads it) plus ``config.json``.
* ``relative_base(adapter_dir, base)`` / ``resolve_base(adapter_dir, recorded)`` -- a LoRA adapter's
  ``base_model_name_or_path`` recorded relative to the adapter folder when the base is a local folder
  (hub names stay as they are), so a run directory can be moved or copied with its base inside it.
  peft's ``AutoPeftModel*`` resolve a relative path against the working directory; ``resolve_base``
  resolves it against the adapter folder, and ``PeftModel.from_pretrained(base_model, adapter_dir)``
  takes the base model object, so it never reads the recorded path.
* ``named_state(names, tensors)`` -- a checkpoint's parameter list as ``{name: tensor}`` (named tensors,
  loadable with ``weights_only=True``); ``tensors_from_state`` reads either form back.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import atomic_write_json

MODEL_DIR = "model"
CARD_FILE = "fedlab.json"
STATE_FILE = "model.pt"


def model_dir(run_path: str | os.PathLike, name: str = MODEL_DIR) -> Path:
    return Path(run_path) / name


def save_model_dir(run_path: str | os.PathLike, model, tokenizer=None, *, info: dict | None = None,
                   name: str = MODEL_DIR) -> Path:
    """``model.save_pretrained`` and ``tokenizer.save_pretrained`` into ``<run_path>/<name>/``; returns it.

    ``model`` may be a ``torch.compile`` wrapper (its ``_orig_mod`` is saved). ``info`` (e.g. the summary's
    headline metrics) goes to ``fedlab.json`` with the run directory's name.
    """
    out = model_dir(run_path, name)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    atomic_write_json(out / CARD_FILE, {"run": Path(run_path).name, "format": "transformers",
                                        "class": type(model).__name__, **(info or {})})
    return out


def save_state_dict_dir(run_path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict,
                        *, info: dict | None = None, name: str = MODEL_DIR) -> Path:
    """Named tensors (CPU, contiguous) in ``<run>/<name>/model.pt`` plus ``config.json``; returns the folder."""
    out = model_dir(run_path, name)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(tensors, tmp)
    tmp.replace(out / STATE_FILE)
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / CARD_FILE, {"run": Path(run_path).name, "format": "state_dict",
                                        "weights": STATE_FILE, **(info or {})})
    return out


def load_state_dict_dir(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(named tensors, config) written by ``save_state_dict_dir``; reads with ``weights_only=True``."""
    folder = Path(folder)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return state, config


# ----------------------------------------------------------------------------------------------------------
# adapters' base model paths

def relative_base(adapter_dir: str | os.PathLike, base: str | None) -> str | None:
    """``base`` relative to ``adapter_dir`` when it is a local folder, else unchanged (a hub name, None)."""
    if not base or not Path(base).is_dir():
        return base
    return os.path.relpath(Path(base).resolve(), Path(adapter_dir).resolve())


def resolve_base(adapter_dir: str | os.PathLike, recorded: str | None) -> str | None:
    """The base model an adapter names: a relative path is taken from the adapter folder when that exists."""
    if not recorded or Path(recorded).is_absolute():
        return recorded
    candidate = Path(adapter_dir) / recorded
    return str(candidate.resolve()) if candidate.exists() else recorded


# ----------------------------------------------------------------------------------------------------------
# checkpoints: named tensors

def named_state(names: Iterable[str], tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: CPU copy}`` for a parameter list and its names (``common.params.named_trainable`` order)."""
    names = list(names)
    if len(names) != len(tensors):
        raise ValueError(f"{len(names)} names for {len(tensors)} tensors")
    return {n: t.detach().to("cpu", copy=True) for n, t in zip(names, tensors)}


def tensors_from_state(state: Any, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """A parameter list from ``named_state``'s dict (in ``names`` order, or insertion order) or a plain list
    (checkpoints written before parameters were named)."""
    if isinstance(state, dict):
        if names is None:
            return list(state.values())
        missing = [n for n in names if n not in state]
        if missing:
            raise KeyError(f"checkpoint has no tensor for {missing[:3]}")
        return [state[n] for n in names]
    return list(state)
