"""GLUE TSV files (SST-2, MRPC, STS-B) in the layouts GLUE distributes, from chains of the embedded text source
(``common.synthetic_text``): SST-2 labels from inserted sentiment words, MRPC pairs light paraphrases or heavy
rewrites, STS-B scores from the fraction of words replaced; label or score noise keeps them from being trivial.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.cli import check
from common.seed import numpy_rng
from common.synthetic_text import PUNCT, TextSource, default_source, prose

GLUE_TASKS = ("sst2", "mrpc", "stsb")
_POSITIVE = ("good", "great", "charming", "moving", "funny", "brilliant", "touching", "wonderful", "smart",
             "beautiful", "engaging", "fresh", "witty", "delightful", "gripping", "tender")
_NEGATIVE = ("bad", "dull", "boring", "tedious", "flat", "awful", "clumsy", "stale", "lifeless",
             "predictable", "mediocre", "tiresome", "bland", "shallow", "messy", "pointless")


def _sst2_row(words: list[str], rng: np.random.Generator, noise: float) -> tuple[str, int]:
    """Filler words with 1-3 sentiment words (each of the sentence's polarity with probability 0.9), some
    negated ("not dull"); label: the summed polarity's sign (ties: the sentence's), flipped with ``noise``."""
    words = [w for w in words if w != "."]
    score, polarity = 0.0, rng.random() < 0.5
    for _ in range(int(rng.integers(1, 4))):
        positive = polarity if rng.random() < 0.9 else not polarity
        word = str(rng.choice(_POSITIVE if positive else _NEGATIVE))
        negated = rng.random() < 0.15
        score += (1 if positive else -1) * (-1 if negated else 1)
        pos = int(rng.integers(len(words) + 1))
        words[pos:pos] = ["not", word] if negated else [word]
    label = int(score > 0 or (score == 0 and polarity)) ^ int(rng.random() < noise)  # flipped with ``noise``
    words = [w for i, w in enumerate(words) if w != "," or 0 < i < len(words) - 1 and words[i + 1] != ","]
    return " ".join(words + (["."] if rng.random() < 0.4 else [])) + " ", label


def _edit(source: TextSource, words: list[str], frac: float, rng: np.random.Generator) -> list[str]:
    """Replace a fraction ``frac`` of the content words by random content words."""
    out = list(words)
    content = [i for i, w in enumerate(out) if w not in PUNCT]
    for i in rng.choice(content, round(frac * len(content)), replace=False) if content else []:
        out[i] = source.words[int(rng.integers(42, len(source.words)))]
    return out


def _pair(words: list[str]) -> list[str]:
    """A chain sample as one sentence: inner full stops dropped, one at the end."""
    words = [w for w in words if w != "."]
    while words and words[-1] == ",":
        words.pop()
    return words + ["."]


def _paraphrase(source: TextSource, words: list[str], rng: np.random.Generator) -> list[str]:
    """Light edits: swap two clauses at a comma, change 0-15% of the words, drop one word."""
    body = words[:-1]
    if "," in body and rng.random() < 0.5:
        i = body.index(",")
        body = body[i + 1:] + [","] + body[:i]
    body = _edit(source, body, rng.uniform(0, 0.15), rng)
    if len(body) > 6 and rng.random() < 0.5:
        del body[int(rng.integers(len(body)))]
    return body + ["."]


def write_glue(out_dir, task: str, n_train: int = 2000, n_dev: int = 300, n_test: int = 300, seed: int = 0,
               noise: float = 0.1, source: TextSource | None = None) -> Path:
    """train.tsv / dev.tsv / test.tsv in the real GLUE layout of ``task``.

    sst2: ``sentence\\tlabel`` (test ``index\\tsentence``), label from sentiment words (``noise`` flipped);
    mrpc: UTF-8 BOM + ``Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String`` (test: ``index`` first, no BOM),
    label 1 (about 2/3 of pairs) when sentence 2 is a light edit of sentence 1, 0 when 35-75% of its
    words differ, ``noise`` flipped; strings may hold unbalanced quotes as the real file does;
    stsb: ``index genre filename year old_index source1 source2 sentence1 sentence2 score``
    (test without score), score = 5 * (1 - fraction of words replaced) + N(0, 0.5), clipped to [0, 5].
    """
    check(task in GLUE_TASKS, f"GLUE task {task!r} is not generated; expected one of {', '.join(GLUE_TASKS)}")
    source = source or default_source()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rng = numpy_rng(seed, "glue", task, split)
        test = split == "test"
        lengths = rng.integers(4, 20, size=n) if task == "sst2" else rng.integers(10, 30, size=n)
        chains = [[source.words[j] for j in c] for c in source.sample(rng.integers(0, 4, size=n), lengths, rng)]
        rows = []
        for i, chain in enumerate(chains):
            if task == "sst2":
                sent, label = _sst2_row(chain, rng, noise)
                rows.append([str(i), sent.rstrip()] if test else [sent, str(label)])
                continue
            s1 = _pair(chain)
            if task == "mrpc":
                label = int(rng.random() < 0.67)
                s2 = _paraphrase(source, s1, rng) if label else _edit(source, s1, rng.uniform(0.35, 0.75), rng)
                label = 1 - label if rng.random() < noise else label
                a, b = prose(s1), prose(s2)
                if rng.random() < 0.03:
                    b = '"' + b                    # unbalanced quote: readers must use quoting=QUOTE_NONE
                ids = [str(x) for x in rng.integers(100000, 3500000, size=2)]
                rows.append([str(i), *ids, a, b] if test else [str(label), *ids, a, b])
            else:
                frac = rng.random()
                s2 = _edit(source, s1, frac, rng)
                score = float(np.clip(5.0 * (1.0 - frac) + rng.normal(0, 0.5), 0.0, 5.0))
                genre, filename = [("main-captions", "MSRvid"), ("main-news", "headlines"),
                                   ("main-forums", "deft-forum")][int(rng.integers(3))]
                row = [str(i), genre, filename, "2012test", f"{i:04d}", "none", "none", prose(s1), prose(s2)]
                rows.append(row if test else row + [f"{score:.3f}"])
        header = {"sst2": ["index", "sentence"] if test else ["sentence", "label"],
                  "mrpc": ["index" if test else "Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                           "sentence1", "sentence2"] + ([] if test else ["score"])}[task]
        text = "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
        (out / f"{split}.tsv").write_text(("\ufeff" if task == "mrpc" and not test else "") + text, encoding="utf-8")
    return out

