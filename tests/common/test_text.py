"""common.text: offline BPE / word tokenizers (cached), local GPT-2 files, cached token streams, LM blocks."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common import text
from common.cli import UsageError

CORPUS = ("the cat sat on the mat . the dog sat on the log .\n" * 40
          + " = Heading = \n zorbel quint zorbel quint , the cat .\n" * 20)


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "train.raw"
    f.write_text(CORPUS)
    return f


def test_bpe_trained_offline_cached_and_styled(corpus, tmp_path):
    cache = tmp_path / "cache"
    tok = text.load_tokenizer("bpe", train_files=[corpus], vocab_size=400, cache_dir=cache)
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and len(tok) <= 400
    files = list((cache / "tokenizers").glob("*.json"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = text.load_tokenizer("bpe", train_files=[corpus], vocab_size=400, cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not retrained
    assert again.get_vocab() == tok.get_vocab()
    ids = tok(" the cat sat")["input_ids"]
    assert tok.decode(ids) == " the cat sat"
    assert len(ids) == 3  # frequent words became single tokens with their leading space
    rob = text.load_tokenizer("bpe", train_files=[corpus], vocab_size=400, cache_dir=cache, style="roberta")
    assert {rob.bos_token, rob.eos_token, rob.pad_token, rob.unk_token, rob.mask_token} == \
        {"<s>", "</s>", "<pad>", "<unk>", "<mask>"}


def test_the_cache_key_tells_file_lists_apart(tmp_path):
    """The same bytes split differently over the files are other training files (each a document), so another
    tokenizer: the key covers each file's length."""
    (tmp_path / "a").write_text("ab"), (tmp_path / "b").write_text("c")
    (tmp_path / "c").write_text("a"), (tmp_path / "d").write_text("bc")
    assert text._files_hash([tmp_path / "a", tmp_path / "b"]) != text._files_hash([tmp_path / "c", tmp_path / "d"])
    assert text._files_hash([tmp_path / "a"], 400) == text._files_hash([tmp_path / "a"], 400)


def test_word_tokenizer_one_token_per_word(corpus, tmp_path):
    tok = text.load_tokenizer("word", train_files=[corpus], vocab_size=1000, cache_dir=tmp_path)
    line = "the dog sat on the log ."
    ids = text.encode_text(tok, line)
    assert len(ids) == len(line.split())
    assert tok.decode(ids.tolist()) == line
    assert text.encode_text(tok, "unseen")[0] == tok.unk_token_id


def test_encode_text_is_cached_and_matches_the_tokenizer(corpus, tmp_path):
    tok = text.load_tokenizer("bpe", train_files=[corpus], vocab_size=400, cache_dir=tmp_path)
    stream = text.encode_text(tok, CORPUS, cache_dir=tmp_path)
    assert stream.dtype == torch.long and stream.dim() == 1
    expected = [i for line in CORPUS.splitlines(keepends=True) for i in tok(line)["input_ids"]]
    assert stream.tolist() == expected
    (cached,) = (tmp_path / "streams").glob("*.pt")
    torch.save(torch.tensor([7, 7, 7], dtype=torch.int32), cached)  # proves the second call reads the cache
    assert text.encode_text(tok, CORPUS, cache_dir=tmp_path).tolist() == [7, 7, 7]


def test_gpt2_local_files(shared_data):
    tok = text.load_tokenizer(str(shared_data / "gpt2_tokenizer"))
    assert len(tok) == 50257 and tok.eos_token_id == tok.pad_token_id == 50256
    assert text.encode_text(tok, "Hello world").tolist() == [15496, 995]  # GPT-2's published ids


def test_bad_specs_are_usage_errors(tmp_path, monkeypatch):
    import transformers

    class OfflineAuto:  # what AutoTokenizer raises offline without a cached copy (importing it is slow)
        @staticmethod
        def from_pretrained(name, cache_dir=None, **kwargs):
            raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}")

    monkeypatch.setattr(transformers, "AutoTokenizer", OfflineAuto)
    with pytest.raises(UsageError, match="could not be loaded.*couldn't connect"):
        text.load_tokenizer("no-such-org/no-such-tokenizer", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="train_files"):
        text.load_tokenizer("bpe")
    with pytest.raises(UsageError, match="does not exist"):
        text.load_tokenizer("bpe", train_files=[tmp_path / "missing.raw"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UsageError, match="vocab.json"):
        text.load_tokenizer(str(tmp_path / "empty_dir"))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), seq_len=st.integers(2, 40))
def test_lm_blocks_keep_every_token(n, seq_len):
    tokens = torch.arange(n) + 5
    blocks = text.lm_blocks(tokens, seq_len)
    assert blocks.shape == (-(-n // seq_len), seq_len)
    flat = blocks.reshape(-1)
    assert flat[:n].tolist() == tokens.tolist()  # in order, nothing dropped
    assert (flat[n:] == text.IGNORE_INDEX).all()  # only the tail of the last block is padding
    batch = text.lm_batch(blocks, pad_id=0)
    assert (batch["input_ids"] >= 0).all() and torch.equal(batch["labels"], blocks)
    assert (batch["input_ids"].reshape(-1)[n:] == 0).all()


def test_lm_blocks_rejects_bad_input():
    with pytest.raises(UsageError):
        text.lm_blocks(torch.arange(10), 1)
    with pytest.raises(UsageError):
        text.lm_blocks(torch.zeros(0, dtype=torch.long), 4)
