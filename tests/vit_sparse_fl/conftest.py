"""The text path's fixture: a tiny random BERT folder and AG News CSV rows written here (never the wheel)."""
from __future__ import annotations

import csv
import random

import pytest
import torch

WORDS = {0: "vote senate minister election", 1: "goal match coach league", 2: "stocks profit market shares",
         3: "software chip internet space"}
FILLER = "the a of in on today new says report after"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(encoder folder, AG News folder): a 2-layer random BERT with a word-level vocabulary, and 4-class CSV
    rows in the original format (quoted class index 1..4, title, description with an escaped newline)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("text")
    words = sorted({w for v in WORDS.values() for w in v.split()} | set(FILLER.split()))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    model_dir = root / "encoder"
    BertTokenizer(vocab=vocab).save_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(model_dir)
    data = root / "ag_news"
    data.mkdir()
    rng = random.Random(0)
    with open(data / "test.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i in range(480):
            pool = (WORDS[i % 4] + " " + FILLER).split()
            title, first, second = (" ".join(rng.choice(pool) for _ in range(k)) for k in (4, 6, 4))
            w.writerow([str(i % 4 + 1), title, first + "\\" + second])
    return model_dir, data
