"""Tokenized GLUE splits and the tiny RoBERTa's config: what both the classifier (``modeling``) and its
masked-LM pretraining stage (``mlm``) build on, in a module of its own so neither imports the other's caller."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lora_glue_fl.glue_tasks import Examples

# the tiny model of --quick: a 2-layer RoBERTa initialised from the seed (or pretrained by lora_glue_fl/mlm.py)
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def tiny_config(tokenizer, max_seq_length: int, **extra):
    """The tiny RoBERTa's config for ``tokenizer`` (positions for ``max_seq_length`` tokens)."""
    from transformers import RobertaConfig
    return RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_seq_length + 2 + 1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, **TINY, **extra)


@dataclass
class Encoded:
    input_ids: torch.Tensor   # [N, T] padded with the pad id
    lengths: torch.Tensor     # [N] tokens per example
    labels: torch.Tensor      # [N] int64 or float32
    token_type_ids: torch.Tensor | None = None  # [N, T] segment ids (0 / 1 in pairs) for models that use them

    _resident: dict = field(default_factory=dict, repr=False, compare=False)  # device -> resident tensors

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def on(self, device) -> tuple:
        """(input_ids, lengths, labels, token_type_ids) on ``device``, copied there once and kept."""
        device = torch.device(device)
        tensors = (self.input_ids, self.lengths, self.labels, self.token_type_ids)
        if device.type == "cpu":
            return tensors
        if device not in self._resident:
            self._resident[device] = tuple(None if t is None else t.to(device) for t in tensors)
        return self._resident[device]

    def batch(self, idx: torch.Tensor, device) -> dict:
        """Rows ``idx`` (a CPU index tensor), trimmed to the longest of them (dynamic padding). The width is
        read from the CPU copy of the lengths, so building a batch never waits for the device."""
        t = int(self.lengths[idx].max())
        ids, lengths, labels, types = self.on(device)
        idx = idx.to(ids.device, non_blocking=True)
        mask = (torch.arange(t, device=ids.device)[None, :] < lengths[idx][:, None]).long()
        out = {"input_ids": ids[idx, :t], "attention_mask": mask, "labels": labels[idx]}
        if types is not None:
            out["token_type_ids"] = types[idx, :t]
        return out


def encode(tokenizer, ex: Examples, max_length: int, token_types: bool = False) -> Encoded:
    """Tokenize once with the tokenizer's own template (pairs: RoBERTa ``<s> a </s></s> b </s>``, BERT
    ``[CLS] a [SEP] b [SEP]``), truncated to ``max_length``; ``token_types``: keep the segment ids (pass
    ``uses_token_types(model)``)."""
    enc = tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=max_length,
                    return_token_type_ids=bool(token_types))
    ids = enc["input_ids"]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    width = int(lengths.max()) if len(ids) else 1
    out = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    types = torch.zeros((len(ids), width), dtype=torch.long) if token_types else None
    for i, x in enumerate(ids):
        out[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        if types is not None:
            types[i, :len(x)] = torch.tensor(enc["token_type_ids"][i], dtype=torch.long)
    labels = torch.from_numpy(np.asarray(ex.label))
    return Encoded(out, lengths, labels.float() if labels.is_floating_point() else labels.long(), types)
