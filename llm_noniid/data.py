"""Text sources for llm_noniid (``TextData``: texts and topic labels): AG News (CSV layout or the hub), WikiText-2
(raw files or the hub), the embedded synthetic topic-structured corpus; style scores; per-example tokenization
(``encode``) with padding -100 in the labels, so it never enters the loss (the source trained on pad tokens).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_path
from common.errors import UsageError, check, check_no_nul, first_line, read_text

IGNORE_INDEX = -100
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")


@dataclass
class TextData:
    """texts[i] with topic label labels[i] in [0, num_classes) (AG News class, WikiText article)."""
    texts: list[str]
    labels: np.ndarray
    num_classes: int


def read_ag_news_csv(path: str | Path) -> TextData:
    """Original AG News CSV: rows ``"class","title","description"`` with class 1..4, no header."""
    path = Path(path)
    check(path.is_file(), f"AG News file {path} does not exist; expected train.csv / test.csv in --data-dir")
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row:
                    continue
                check_no_nul(path, lineno, row)
                if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= len(AG_NEWS_CLASSES):
                    raise UsageError(f"{path}:{lineno}: expected \"class\",\"title\",\"description\" with "
                                     f"class 1..{len(AG_NEWS_CLASSES)}, got {row[:3]!r}")
                # the CSV escapes newlines inside descriptions as a backslash
                texts.append(f"{row[1].strip()}. {row[2].replace(chr(92), ' ').strip()}")
                labels.append(int(row[0]) - 1)
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); expected the AG News CSV") from None
    except csv.Error as e:
        raise UsageError(f"{path} is not a CSV file ({e}); expected the AG News CSV") from None
    check(len(texts) > 0, f"AG News file {path} has no rows")
    return TextData(texts, np.asarray(labels, dtype=np.int64), len(AG_NEWS_CLASSES))


def split_ag_news_csv(src: str | Path, dst: str | Path, valid_fraction: float = 0.1, seed: int = 0) -> Path:
    """Split one AG News CSV (e.g. the real test split) into ``dst/train.csv`` and ``dst/test.csv``,
    stratified by class, rows copied verbatim."""
    src, dst = Path(src), Path(dst)
    check(src.is_file(), f"{src} does not exist; expected an AG News CSV file")
    with open(src, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    for lineno, row in enumerate(rows, 1):
        check_no_nul(src, lineno, row)
    rng, train, valid = np.random.default_rng(seed), [], []
    for key in sorted({r[0] for r in rows}):
        group = [r for r in rows if r[0] == key]
        order = rng.permutation(len(group))
        n_valid = max(1, round(valid_fraction * len(group)))
        valid += [group[i] for i in order[:n_valid]]
        train += [group[i] for i in order[n_valid:]]
    for name, part in (("train.csv", train), ("test.csv", valid)):
        with atomic_path(dst / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(part)
    return dst


TITLE = re.compile(r"= [^=](.*[^=])? =")  # a stripped top-level heading ("= Title =", one character or more)


def read_wikitext_raw(path: str | Path) -> TextData:
    """WikiText raw file: ``= Title =`` opens an article, ``= = Section = =`` a section, text lines are
    paragraphs. Each paragraph is one example; its label is the article index (topic = article)."""
    path = Path(path)
    check(path.is_file(), f"WikiText file {path} does not exist; expected wiki.<split>.raw in --data-dir")
    text = read_text(path, "WikiText raw text")
    check("\x00" not in text, f"{path} holds NUL bytes (a binary file); expected WikiText raw text")
    return _wikitext_from_lines(text.splitlines(), str(path))


def _wikitext_from_lines(lines: list[str], where: str) -> TextData:
    texts, labels, article = [], [], -1
    for line in lines:
        s = line.strip()
        if TITLE.fullmatch(s):  # top-level heading: a new article
            article += 1
        elif s and not (s.startswith("= ") and s.endswith(" =")):  # not a section heading
            texts.append(s)
            labels.append(max(article, 0))
    check(len(texts) > 0, f"{where}: no paragraphs found; expected WikiText raw text")
    return TextData(texts, np.asarray(labels, dtype=np.int64), max(article, 0) + 1)


def load_splits(data: str, data_dir: str | None = None, cache_dir: str | None = None) -> tuple[TextData, TextData]:
    """(train, valid) for ``--data ag_news | wikitext | synthetic``: the original files in ``--data-dir``, else
    the hub (AG News: test = valid); synthetic: the embedded topic-structured AG News CSVs (offline)."""
    if data == "synthetic":
        from common import synthetic

        data, data_dir = "ag_news", synthetic.ensure("ag_news")
    if data == "ag_news":
        if data_dir:
            return tuple(read_ag_news_csv(Path(data_dir) / f"{split}.csv") for split in ("train", "test"))
        ds = _hub_dataset("ag_news", None, cache_dir)
        return tuple(TextData([t.replace("\\", " ") for t in ds[s]["text"]], np.asarray(ds[s]["label"], dtype=np.int64),
                              len(AG_NEWS_CLASSES)) for s in ("train", "test"))
    if data == "wikitext":
        if data_dir:
            return tuple(read_wikitext_raw(Path(data_dir) / f"wiki.{split}.raw") for split in ("train", "valid"))
        ds = _hub_dataset("wikitext", "wikitext-2-raw-v1", cache_dir)
        return tuple(_wikitext_from_lines(list(ds[s]["text"]), f"wikitext {s}") for s in ("train", "validation"))
    raise UsageError(f"--data {data!r} is unknown; expected ag_news, wikitext or synthetic")


def _hub_dataset(name: str, config: str | None, cache_dir: str | None):
    import datasets

    try:
        return datasets.load_dataset(name, config, cache_dir=cache_dir)
    except Exception as e:  # offline / not cached: datasets raises several types
        raise UsageError(f"dataset {name!r} could not be loaded from the hub or its cache ({first_line(e, 160)}); "
                         f"give --data-dir with the original files or use --data synthetic") from None


def subsample(data: TextData, max_examples: int | None, seed: int) -> TextData:
    """A seeded random subset of at most ``max_examples`` (None or 0: all), order kept."""
    if not max_examples or len(data.texts) <= max_examples:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data.texts), max_examples, replace=False))
    return TextData([data.texts[i] for i in keep], data.labels[keep], data.num_classes)


STYLE_CRITERIA = ("length", "formality", "complexity")
_INFORMAL = re.compile(r"(!|\?|\b(i|you|we|me|my|your|our|lol|gonna|wanna|yeah|ok|okay)\b|n't\b|'(s|re|ll|ve|d|m)\b)",
                       re.IGNORECASE)


def style_scores(texts: list[str], criterion: str) -> np.ndarray:
    """One score per text for ``--style-criterion`` (higher = longer / more formal / more complex). length: the
    number of words; formality: mean word length minus 5 x the rate of informal markers per word (first/second-person
    pronouns, contractions, '!' and '?', chat words); complexity: Flesch-Kincaid grade."""
    check(criterion in STYLE_CRITERIA,
          f"--style-criterion {criterion!r} is unknown; expected {', '.join(STYLE_CRITERIA)}")
    out = np.zeros(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        words = re.findall(r"[A-Za-z']+", t)
        n = max(1, len(words))
        if criterion == "length":
            out[i] = len(t.split())
        elif criterion == "formality":
            out[i] = sum(len(w) for w in words) / n - 5.0 * len(_INFORMAL.findall(t)) / n
        else:  # complexity
            sentences = max(1, len(re.findall(r"[.!?]+", t)))
            syllables = sum(max(1, len(re.findall(r"[aeiouy]+", w.lower()))) for w in words)
            out[i] = 0.39 * n / sentences + 11.8 * syllables / n - 15.59
    return out


def encode(tokenizer, texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids [N, T], labels [N, T]), T = seq_len, each text followed by the eos token and
    truncated to T; padding is the pad id in the inputs and -100 in the labels (right padding, so a
    causal model never attends to it from a real position)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encs = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = torch.full((len(texts), seq_len), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(encs):
        row = (e.ids + ([eos] if eos is not None else []))[:seq_len]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.masked_fill(ids < 0, pad), ids


def lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of real (non -100) label positions per row -> [N]."""
    return (labels != IGNORE_INDEX).sum(dim=1)
