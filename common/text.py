"""Tokenizers and token streams shared by the text subprojects.

* ``load_tokenizer(spec, ...)``: a ``transformers.PreTrainedTokenizerFast`` from "bpe" (a byte-level BPE
  trained on ``train_files``, cached by content hash; ``style`` "gpt2": ``<|endoftext|>`` as eos and pad,
  "roberta": ``<s> </s> <pad> <unk> <mask>``), "word" (every whitespace word of ``train_files`` one token, so
  per-token perplexity is per-word; unseen words ``<unk>``), a local folder (``tokenizer.json`` or
  ``vocab.json`` + ``merges.txt``) or a hub name (offline and not cached: ``UsageError``).
* ``encode_text`` -> a 1-D ``LongTensor`` token stream, cached; ``lm_blocks`` -> ``[N, seq_len]`` blocks, the
  last partial one padded with -100; ``lm_batch`` -> ``{input_ids, labels}`` for a causal LM.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from common import pretrained
from common.caches import default_cache_dir, derived_cache_dir  # noqa: F401  (re-exported)
from common.checkpoint import atomic_path
from common.cli import UsageError, check, check_out_dir

IGNORE_INDEX = -100
_STYLES = {
    "gpt2": {"specials": ["<|endoftext|>"], **dict.fromkeys(("bos", "eos", "pad", "unk"), "<|endoftext|>")},
    "roberta": {"specials": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "bos": "<s>", "eos": "</s>",
                "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"},
}


def _files_hash(files: Sequence[str | Path], *extra) -> str:
    """A key of the files' contents, each with its length (["ab", "c"] is not ["a", "bc"]), and of ``extra``."""
    h = hashlib.sha256(repr(extra).encode())
    for f in files:
        data = Path(f).read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def _specials(style: str) -> dict:
    """The style's special tokens as tokenizer keyword arguments (``bos_token=...``)."""
    return {k + "_token": _STYLES[style][k] for k in ("bos", "eos", "pad", "unk", "mask") if k in _STYLES[style]}


def _train(kind: str, train_files: Sequence[str | Path], vocab_size: int, style: str, cache_dir: Path):
    """A byte-level BPE (``kind`` "bpe") or word-level vocabulary ("word"), cached by content."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    path = cache_dir / "tokenizers" / f"{kind}-{style}-{vocab_size}-{_files_hash(train_files, vocab_size, style)}.json"
    if not path.exists():
        check_out_dir(cache_dir, "the tokenizer cache")  # e.g. ~/.cache/fedlab a file: one line, nothing written
        specials = _STYLES[style]["specials"]
        if kind == "bpe":
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                          special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        else:
            tok = Tokenizer(models.WordLevel(unk_token=_STYLES[style]["unk"]))
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words as written: "." and "@-@" stay tokens
            tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                                special_tokens=specials)
        tok.train([str(f) for f in train_files], trainer)
        with atomic_path(path) as tmp:  # a crash never leaves half a file
            tok.save(str(tmp))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)), **_specials(style))


def _load_local(folder: Path, style: str):
    from transformers import PreTrainedTokenizerFast

    kw = _specials(style)
    pretrained.check_folder(folder)
    if (folder / "tokenizer.json").is_file():
        with pretrained.loading(folder / "tokenizer.json"):
            return pretrained.probed(PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kw))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import GPT2TokenizerFast, RobertaTokenizerFast

        cls = RobertaTokenizerFast if style == "roberta" else GPT2TokenizerFast
        with pretrained.loading(f"{folder}/vocab.json + merges.txt"):
            return pretrained.probed(cls(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                         **kw))
    raise UsageError(f"tokenizer folder {folder} has neither tokenizer.json nor vocab.json + merges.txt")


def load_tokenizer(spec: str, *, train_files: Sequence[str | Path] | None = None, vocab_size: int = 4096,
                   cache_dir: str | Path | None = None, style: str = "gpt2"):
    """A fast tokenizer from ``spec`` (module docstring); ``vocab_size`` (trained kinds) includes the specials."""
    check(style in _STYLES, f"tokenizer style {style!r} is unknown; expected one of {sorted(_STYLES)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec in ("bpe", "word"):
        check(bool(train_files), f"tokenizer {spec!r} is trained on the training split: give train_files")
        for f in train_files:
            check(Path(f).is_file(), f"tokenizer training file {f} does not exist")
        check(vocab_size >= 300 or spec == "word",
              f"a byte-level BPE needs vocab_size >= 300 (256 bytes + merges), got {vocab_size}")
        return _train(spec, train_files, vocab_size, style, cache)
    if Path(spec).expanduser().is_dir():
        tok = _load_local(Path(spec).expanduser(), style)
    else:
        check(not Path(spec).expanduser().exists(), f"tokenizer {spec} is a file; expected a folder or a hub name")
        from transformers import AutoTokenizer

        try:
            tok = pretrained.load(AutoTokenizer, spec, cache_dir=cache_dir)
        except pretrained.NotLoaded as e:
            raise UsageError(f"tokenizer {spec!r} could not be loaded from the hub or its cache "
                             f"({e.reason}); give a local folder with vocab.json + merges.txt, "
                             "or 'bpe'") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_text(tokenizer, text: str, cache_dir: str | Path | None = None) -> torch.Tensor:
    """``text`` as one stream -> ``LongTensor [n_tokens]`` (no special tokens), encoded line by line (newlines
    kept) in one batched, parallel call, so no token crosses a line break. With ``cache_dir``: stored as
    ``streams/<text hash>-<tokenizer hash>.pt`` and loaded by later calls."""
    path = None
    if cache_dir is not None:
        spec = tokenizer.backend_tokenizer.to_str()  # its full definition (vocabulary, merges, normalisation)
        key = "-".join(hashlib.sha256(x.encode()).hexdigest()[:16] for x in (text, spec))
        path = Path(cache_dir) / "streams" / f"{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=True).long()
    lines = text.splitlines(keepends=True)
    encs = tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False) if lines else []
    stream = torch.tensor([i for e in encs for i in e.ids], dtype=torch.long)
    if path is not None:
        with atomic_path(path) as tmp:  # int32 halves the file; ids of every tokenizer here fit
            torch.save(stream.to(torch.int32), str(tmp))
    return stream


def lm_blocks(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A 1-D stream cut into consecutive blocks -> ``LongTensor [ceil(n / seq_len), seq_len]``; the last
    partial block is kept, padded with -100 (``IGNORE_INDEX``), which never counts as a token."""
    check(seq_len >= 2, f"sequence length must be at least 2, got {seq_len}")
    tokens = tokens.reshape(-1).long()
    check(tokens.numel() > 0, "the token stream is empty; expected text with at least one token")
    n_blocks = -(-tokens.numel() // seq_len)
    out = torch.full((n_blocks * seq_len,), IGNORE_INDEX, dtype=torch.long)
    out[: tokens.numel()] = tokens
    return out.view(n_blocks, seq_len)


def lm_batch(blocks: torch.Tensor, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Blocks ``[B, T]`` -> ``{"input_ids", "labels"}`` (HF convention: labels aligned with the inputs, shifted
    in the model; padding ``pad_id`` in inputs, -100 in labels)."""
    return {"input_ids": blocks.masked_fill(blocks < 0, pad_id), "labels": blocks}
