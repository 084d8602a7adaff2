"""WikiText-style language-modelling data: raw splits -> tokenizer -> cached token stream -> blocks -> shards.

Sources: ``--data wikitext2`` (Hugging Face ``wikitext-2-raw-v1``), ``--data-dir DIR`` (``wiki.train.raw``,
``wiki.valid.raw``, optionally ``wiki.test.raw``, raw format) or ``--data synthetic`` (``common.synthetic``'s
embedded topic-structured source, whose optimal perplexity per word is known); nothing falls back to synthetic.
Each split is tokenized once (cached) and cut into ``[N, T]`` blocks, the last one padded with -100 labels.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import cli, evaluate, report, runlog, shard, synthetic, text
from common.checkpoint import atomic_write_text
from common.errors import read_text

SPLIT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw"}
TEST_FILE = "wiki.test.raw"  # read only after training, by --test (split_wikitext.py writes it)
_HEADING = re.compile(r"^ = [^=].* = $")  # top-level article title line of the raw format


@dataclass
class LMData:
    tokenizer: object
    vocab_size: int
    train: torch.Tensor                    # [N, T] training blocks, -100 padding in the last one
    valid: torch.Tensor                    # [M, T] validation blocks
    words_per_token: float                 # valid split: whitespace words / tokens, for per-word perplexity
    optimal_ppl: float | None = None       # synthetic source: optimal perplexity per word, exp(mean entropy rate)
    train_topics: np.ndarray | None = None  # [N] topic id of each training block (synthetic only)
    fingerprint: dict | None = None        # what was read (common.runlog.data_fingerprint): --resume checks it


def source_tag(args: argparse.Namespace) -> str | None:
    """The data source for run names: None for the default embedded data, else wikitext2 or data-<folder>."""
    if args.data_dir:
        return f"data-{Path(args.data_dir).resolve().name}"
    return None if args.data == "synthetic" else args.data


def _synthetic_dir(cache_dir) -> tuple[Path, dict]:
    root = Path(synthetic.ensure("wikitext", root=Path(cache_dir) / "synthetic" if cache_dir else None))
    meta_file = root / "meta.json"
    return root, (json.loads(meta_file.read_text()) if meta_file.is_file() else {})


def _hf_wikitext2(cache_dir) -> dict[str, str]:
    import datasets

    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", cache_dir=cache_dir)
    except Exception as e:  # offline / not cached: datasets raises several types
        raise cli.UsageError(f"--data wikitext2 could not be loaded from the hub or --cache-dir "
                             f"({type(e).__name__}); use --data-dir with wiki.*.raw files or --data synthetic"
                             ) from None
    return {"train": "".join(ds["train"]["text"]), "valid": "".join(ds["validation"]["text"])}


def _read_dir(folder: Path) -> dict[str, str]:
    cli.check(folder.is_dir(),
              f"--data-dir {folder} is not a folder; expected one with wiki.train.raw and wiki.valid.raw")
    out = {}
    for split, name in SPLIT_FILES.items():
        f = folder / name
        cli.check(f.is_file(), f"--data-dir {folder} has no {name}; expected wiki.train.raw and wiki.valid.raw")
        out[split] = read_text(f, "WikiText raw text in UTF-8")
        cli.check("\x00" not in out[split],
                  f"{f} holds NUL bytes (a binary file, not UTF-8 text); expected WikiText raw text")
        cli.check(out[split].strip() != "", f"{f} is empty; expected WikiText raw text")
    return out


def _article_of(lines: list[str]) -> np.ndarray:
    """The article of each line: top-level headings up to it, less one (text before the first one joins it)."""
    return np.maximum(np.cumsum([bool(_HEADING.match(line.rstrip("\n"))) for line in lines], dtype=np.int64) - 1, 0)


def articles(lines: list[str]) -> list[list[str]]:
    """Lines grouped into articles, each starting at a top-level heading (text before the first one joins it)."""
    groups = itertools.groupby(zip(_article_of(lines), lines), key=lambda pair: pair[0])
    return [[line for _, line in group] for _, group in groups]


def _article_topics(raw: str, topics_by_article: list[int], seq_len: int, n_blocks: int, tokenizer) -> np.ndarray:
    """Topic of each block: the topic of the article its first token belongs to."""
    lines = raw.splitlines(keepends=True)
    counts = [len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False)]
    token_article = np.repeat(_article_of(lines), counts)
    first = np.minimum(np.arange(n_blocks) * seq_len, len(token_article) - 1)
    art = np.minimum(token_article[first], len(topics_by_article) - 1)
    return np.asarray(topics_by_article, dtype=np.int64)[art]


def load_lm_data(args: argparse.Namespace, device: torch.device | str | None = None) -> LMData:
    """Read the splits named by the flags, tokenize (cached) and block them; with ``device``, the train and
    validation blocks are moved there once (a few MB for WikiText-2), so no step copies data to the GPU."""
    cache = text.derived_cache_dir(args.cache_dir, getattr(args, "out_dir", None))
    meta = {}
    if args.data_dir:
        folder, source = Path(args.data_dir), "dir"
    elif args.data == "wikitext2":
        folder, source, splits = None, "wikitext2", _hf_wikitext2(args.cache_dir)
        train_files = [cache / "wikitext2_train.raw"]
        if not train_files[0].exists():
            atomic_write_text(train_files[0], splits["train"])
    else:
        (folder, meta), source = _synthetic_dir(args.cache_dir), "synthetic"
    if folder is not None:  # the raw files of --data-dir or of the embedded source
        splits, train_files = _read_dir(folder), [folder / SPLIT_FILES["train"]]

    spec = args.tokenizer if args.tokenizer != "auto" else ("gpt2" if source == "wikitext2" else "bpe")
    tok = text.load_tokenizer(spec, train_files=train_files, vocab_size=args.vocab_size, cache_dir=cache)
    streams = {k: text.encode_text(tok, v, cache_dir=cache) for k, v in splits.items()}
    T = args.sequence_length
    for split, s in streams.items():
        cli.check(s.numel() >= T + 1 if split == "valid" else s.numel() >= T,
                  f"--sequence-length {T} is above the {s.numel()} tokens of the {split} split; "
                  f"use a shorter --sequence-length or more data")
    train, valid = text.lm_blocks(streams["train"], T), text.lm_blocks(streams["valid"], T)
    sizes = {"train": train.shape[0], "valid": valid.shape[0]}
    if device is not None:
        train, valid = train.to(device), valid.to(device)
    topics = None
    if getattr(args, "shard", None) == "topic":
        by_article = meta.get("article_topics", {}).get("train")
        if by_article is None and source != "synthetic":  # real text: clusters of the training articles
            arts = ["".join(a) for a in articles(splits["train"].splitlines(keepends=True))]
            by_article = shard.document_topics(arts, min(len(arts), args.topic_clusters or 2 * args.num_clients))
        if by_article is not None:
            topics = _article_topics(splits["train"], by_article, T, train.shape[0], tok)
    fp = runlog.data_fingerprint(source, folder if source == "dir" else None, splits=sizes,
                                 files=[folder / n for n in SPLIT_FILES.values()] if folder else (),
                                 texts=splits if folder is None else None)
    return LMData(tokenizer=tok, vocab_size=len(tok), train=train, valid=valid,
                  words_per_token=len(splits["valid"].split()) / max(int(streams["valid"].numel()), 1),
                  optimal_ppl=meta.get("optimal_perplexity_mean"), train_topics=topics, fingerprint=fp)


def client_shards(args: argparse.Namespace, data: LMData) -> list[np.ndarray]:
    """Training-block indices per client, via ``common.shard``."""
    n = data.train.shape[0]
    cli.check(n >= args.num_clients,
              f"the training split has {n} blocks of {args.sequence_length} tokens, "
              f"fewer than --num-clients {args.num_clients}; use fewer clients or shorter blocks")
    if args.shard == "iid":
        return shard.iid(n, args.num_clients, args.seed)
    if args.shard == "topic":
        cli.check(data.train_topics is not None,
                  "--shard topic needs topic labels: this synthetic source has no meta.json with article topics")
        return shard.category(data.train_topics, args.num_clients, args.seed)
    return shard.contiguous(n, args.num_clients)


def split_holdout(idx: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out): the last ``fraction`` of a client's blocks held out (at least one when > 0)."""
    if fraction <= 0:
        return idx, idx[:0]
    k = max(1, int(round(len(idx) * fraction)))
    cli.check(len(idx) > k, f"a client with {len(idx)} blocks cannot hold out {fraction:.0%} and still train; "
                            f"use fewer clients or shorter blocks")
    return idx[:-k], idx[-k:]


def iterate(blocks: torch.Tensor, batch_size: int, pad_id: int, device):
    """Batches of ``lm_batch`` dicts over ``blocks [N, T]`` in order, the last one possibly smaller."""
    for i in range(0, blocks.shape[0], batch_size):
        yield {k: v.to(device, non_blocking=True) for k, v in text.lm_batch(blocks[i:i + batch_size], pad_id).items()}


def reference_ppls(data: LMData, valid: torch.Tensor) -> dict:
    """The reference points of every summary: the uniform guess and a unigram fitted on the training split, scored
    on ``valid``, per token and per word, the source's optimum per word where it is known, and how many of the
    validation split's blocks ``valid`` holds (``--eval-blocks``: the blocks every perplexity is scored on)."""
    ref = evaluate.unigram_perplexity(data.train, valid, data.vocab_size)
    wpt = data.words_per_token
    return {"uniform_ppl": ref["uniform_ppl"], "unigram_ppl": ref["unigram_ppl"],
            "unigram_ppl_word": float(np.exp(ref["unigram_loss"] / wpt)),
            "uniform_ppl_word": float(np.exp(np.log(ref["uniform_ppl"]) / wpt)),
            "optimal_ppl_word": data.optimal_ppl, "eval_blocks": int(valid.shape[0]),
            "valid_blocks": int(data.valid.shape[0])}


def test_scores(args: argparse.Namespace, data: LMData, model, device) -> dict:
    """``--test``: the perplexity of ``model`` on ``--data-dir``'s wiki.test.raw (read here, after training, and
    nowhere else), per token and per word, and the unigram and uniform references there. Every rank calls it."""
    raw = (Path(args.data_dir) / TEST_FILE).read_text(encoding="utf-8")
    stream = text.encode_text(data.tokenizer, raw, cache_dir=text.derived_cache_dir(args.cache_dir, args.out_dir))
    blocks = text.lm_blocks(stream, args.sequence_length)
    out = evaluate.perplexity(model, iterate(blocks, max(args.batch_size, 8), data.tokenizer.pad_token_id, device),
                              device=device, shard=True)
    ref = evaluate.unigram_perplexity(data.train, blocks, data.vocab_size)
    wpt = len(raw.split()) / max(int(stream.numel()), 1)
    return {"test_loss": out["loss"], "test_ppl": out["ppl"], "test_ppl_word": float(np.exp(out["loss"] / wpt)),
            "test_unigram_ppl": ref["unigram_ppl"], "test_uniform_ppl": ref["uniform_ppl"],
            "test_tokens": out["tokens"], "test_blocks": int(blocks.shape[0])}


def reported_model(args: argparse.Namespace, stopper, kept: list[torch.Tensor], data: LMData, model, device,
                   load=lambda: None) -> dict:
    """Load the model a run reports into ``kept`` (the parameters ``stopper`` watched), then ``load()`` them into
    ``model``: the best-validation one when ``stopper`` kept it (its summary joins the result), else the last.
    With --test, its test scores; with --budget-at too, first those of the budget's best model (budget_test_*)."""
    out = {}
    if stopper is not None and args.test and stopper.budget is not None:
        stopper.restore_(kept, budget=True)
        load()
        out |= {f"budget_{k}": v for k, v in test_scores(args, data, model, device).items()}
    if stopper is not None:
        stopper.restore_(kept)
        out |= stopper.summary()
    load()
    return out | (test_scores(args, data, model, device) if args.test else {})


def final_line(path, summary: dict) -> str:
    """The one line a run ends with (``common.report``): where it is, the final perplexity with its references."""
    opt = summary.get("optimal_ppl_word")
    extra = f"per word {summary.get('final_val_ppl_word', float('nan')):.2f} vs optimum {opt:.2f}" if opt else None
    scored = f"{summary['eval_blocks']} of {summary['valid_blocks']} blocks" if "eval_blocks" in summary else None
    return report.ending_line(path, "final validation perplexity", summary.get("final_val_ppl"),
                              {"unigram": summary["unigram_ppl"], "uniform": summary["uniform_ppl"]}, extra=extra,
                              scored=scored,
                              figures=["perplexity.png"], loader="AutoModelForCausalLM.from_pretrained")
