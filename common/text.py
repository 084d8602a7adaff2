"""CONTRACT STUB (to be implemented): tokenizers and token streams shared by the text subprojects.

load_tokenizer(spec, *, train_files=None, vocab_size=4096, cache_dir=None, style="gpt2") -> PreTrainedTokenizerFast
    spec "bpe": byte-level BPE trained offline on train_files (cached by content hash); style "gpt2" gives
    <|endoftext|> as eos/pad, style "roberta" gives <s> </s> <pad> <unk> <mask>;
    a local folder with vocab.json + merges.txt (or tokenizer.json); or a hub name (AutoTokenizer,
    cache_dir) -> UsageError with a clear line when offline and not cached.
encode_text(tokenizer, text, cache_dir=None) -> torch.LongTensor 1-D token stream (tokenized once, cached).
lm_blocks(tokens, seq_len) -> LongTensor [N, seq_len] cut from the stream (the last partial block kept/padded
    with labels -100, never silently dropped).
"""
