"""Readers of the original formats (AG News CSV, WikiText raw), the 90/10 split, and per-example encoding."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from common.cli import UsageError
from common.text import load_tokenizer
from llm_noniid import data as D


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


def test_ag_news_csv_reader_and_bad_rows(tmp_path):
    write_csv(tmp_path / "a.csv", [["3", "Stocks up", "Markets rose\\today."], ["1", "War", "Talks failed."]])
    d = D.read_ag_news_csv(tmp_path / "a.csv")
    assert d.texts == ["Stocks up. Markets rose today.", "War. Talks failed."]
    assert d.labels.tolist() == [2, 0] and d.num_classes == 4
    write_csv(tmp_path / "b.csv", [["3", "ok", "fine"], ["9", "bad", "class"]])
    with pytest.raises(UsageError, match="b.csv:2"):
        D.read_ag_news_csv(tmp_path / "b.csv")
    with pytest.raises(UsageError, match="does not exist"):
        D.load_splits("ag_news", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="--data 'imdb' is unknown"):
        D.load_splits("imdb")


def test_real_ag_news_split_is_stratified(shared_data, tmp_path):
    src = shared_data / "ag_news_csv" / "test.csv"
    full = D.read_ag_news_csv(src)
    assert len(full.texts) == 7600 and np.bincount(full.labels).tolist() == [1900] * 4
    out = D.split_ag_news_csv(src, tmp_path / "split", valid_fraction=0.1, seed=0)
    train, valid = D.read_ag_news_csv(out / "train.csv"), D.read_ag_news_csv(out / "test.csv")
    assert np.bincount(valid.labels).tolist() == [190] * 4 and len(train.texts) == 6840
    assert sorted(train.texts + valid.texts) == sorted(full.texts)  # every row in exactly one part


def test_wikitext_raw_articles_are_topics(tmp_path):
    (tmp_path / "wiki.train.raw").write_text(
        " \n = Alpha = \n \n First paragraph of alpha . \n \n = = Section = = \n \n Second one . \n"
        " \n = B = \n \n Beta text . \n", encoding="utf-8")  # a one-character title opens an article too
    (tmp_path / "wiki.valid.raw").write_text(" = Gamma = \n \n Gamma text . \n", encoding="utf-8")
    train, valid = D.load_splits("wikitext", str(tmp_path))
    assert train.texts == ["First paragraph of alpha .", "Second one .", "Beta text ."]
    assert train.labels.tolist() == [0, 0, 1] and train.num_classes == 2
    assert valid.texts == ["Gamma text ."]


def test_real_wikitext_raw_parses(shared_data):
    d = D.read_wikitext_raw(shared_data / "wikitext2_raw" / "wiki.test.raw")
    assert len(d.texts) > 1000 and d.num_classes > 30  # WikiText-2 test holds ~60 articles


def test_encode_masks_padding_and_appends_eos(shared_data):
    tok = load_tokenizer(str(shared_data / "gpt2_tokenizer"))
    x, y = D.encode(tok, ["Hello world", "a " * 50], seq_len=8)
    n = len(tok("Hello world")["input_ids"])
    assert y[0, n].item() == tok.eos_token_id and (y[0, n + 1:] == -100).all()
    assert (x[0, n + 1:] == tok.pad_token_id).all() and (x >= 0).all()
    assert D.lengths(y).tolist() == [n + 1, 8]  # the long text is truncated, no padding
    assert torch.equal(x[1], y[1])


def test_embedded_wikitext_reads_through_the_raw_reader():
    from common import synthetic

    train, valid = D.load_splits("wikitext", str(synthetic.ensure("wikitext")))
    assert len(train.texts) > 100 and train.num_classes > 10 and len(valid.texts) > 0
    assert all(not t.startswith("=") for t in train.texts)
