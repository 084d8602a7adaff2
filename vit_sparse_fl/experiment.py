"""What the three training scripts share: model flags, --quick defaults, building the model, the local
training loop over a batch iterator, and evaluation.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from common import cli, flags
from common import distributed as D
from common.evaluate import autocast
from vit_sparse_fl import data as cifar
from vit_sparse_fl.vit import VIT_SMALL, VIT_TINY, ViTClassifier, load_backbone_weights

ARCHS = {"vit_small": VIT_SMALL, "vit_tiny": VIT_TINY}

# Flags whose default depends on --quick are None in the parser and filled by ``apply_quick``; a flag the
# user sets is never overridden (``--quick --data cifar100`` reads the real data with the tiny model).
QUICK = dict(arch="vit_tiny", weights="none", image_size=32, data="synthetic", num_classes=10, max_train=2000,
             max_test=500, batch_size=32, eval_batch_size=250, lr=0.05)
FULL = dict(arch="vit_small", weights="dino", image_size=224, data="synthetic", num_classes=0, max_train=0,
            max_test=0, batch_size=64, eval_batch_size=256)


def add_model_args(parser: argparse.ArgumentParser, *, lr: float, weight_decay: float) -> None:
    g = parser.add_argument_group("model and optimisation")
    g.add_argument("--arch", default=None, choices=sorted(ARCHS),
                   help="vit_small: DINO ViT-S/16 (patch 16, 12 blocks, 6 heads, width 384), the default; "
                        "vit_tiny (patch 4, width 48, 2 blocks, 3 heads): the --quick default")
    g.add_argument("--weights", default=None,
                   help="backbone weights: 'dino' (torch hub cache / download; the default), a path to "
                        "dino_deitsmall16_pretrain.pth, or 'none' for random initialisation (--quick)")
    g.add_argument("--freeze-layers", type=flags.COUNT, default=0,
                   help="freeze the patch embedding and the first N transformer blocks")
    g.add_argument("--head-dropout", type=float, default=0.1, help="dropout before the classifier head")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the cross-entropy")
    g.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate of SGD (default {lr}; --quick: 0.05)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="SGD weight decay")


def apply_quick(args: argparse.Namespace, quick: dict, full: dict) -> argparse.Namespace:
    """Fill every flag the user left at None: from the --quick table (tiny ViT, 10 classes of the embedded
    data, few rounds) or from the full one (ViT-S/16 with DINO weights, all classes, the source's schedule).
    ``quick`` / ``full`` are the calling script's own entries (rounds, epochs, its learning rate)."""
    table = {**QUICK, **quick} if args.quick else {**FULL, **full}
    if getattr(args, "classes", None) and args.num_classes is None:
        args.num_classes = 0                                 # --classes chooses the classes instead
    for key, value in table.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def describe_presets(parser, quick: dict, full: dict) -> None:
    """Append the real defaults of the flags ``apply_quick`` fills (their argparse default is None) to their
    help: ``(default: 300; --quick: 8)``."""
    quick, full = {**QUICK, **quick}, {**FULL, **full}
    for action in parser._actions:
        if action.dest in full and action.default is None and "default" not in (action.help or ""):
            action.help = f"{action.help or ''} (default: {full[action.dest]}; --quick: {quick[action.dest]})"


def validate_model_args(args) -> None:
    cli.check(args.freeze_layers <= ARCHS[args.arch].depth,
              f"--freeze-layers {args.freeze_layers} exceeds the {ARCHS[args.arch].depth} blocks "
              f"of {args.arch}")
    cli.check(args.lr > 0, f"--lr must be positive, got {args.lr}")
    cli.check(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    cli.check(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    cli.check(0 <= args.head_dropout < 1, f"--head-dropout must be in [0, 1), got {args.head_dropout}")
    cli.check(args.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    for flag in ("max_train", "max_test", "num_classes"):
        value = getattr(args, flag, None)
        cli.check(value is None or value >= 0, f"--{flag.replace('_', '-')} must be >= 0 (0: all), got {value}")
    per_class = getattr(args, "synthetic_per_class", None)
    cli.check(not per_class or min(per_class) >= 1, f"--synthetic-per-class must be >= 1, got {per_class}")
    cli.check(0 <= args.label_smoothing < 1,
              f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    cli.check(0 < args.val_fraction < 1, f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    cli.check(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")


def build_model(args, num_classes: int, device: torch.device) -> tuple[ViTClassifier, str]:
    """The classifier on ``device`` with the requested weights and frozen layers; (model, weights source)."""
    base = ARCHS[args.arch]
    cfg = type(base)(**{**base.__dict__, "num_classes": num_classes, "head_dropout": args.head_dropout})
    model = ViTClassifier(cfg)
    source = load_backbone_weights(model, args.weights)
    model.freeze_layers(args.freeze_layers)
    return model.to(device), source


def train_steps(model, optimizer, batch_iter, *, label_smoothing: float, device: torch.device,
                lr: float | None = None, adjust=None) -> tuple[torch.Tensor, int]:
    """One optimizer step per batch from ``batch_iter``; returns (mean loss as a 0-d device tensor, images
    seen). Nothing is read back to the host: the caller reads the losses once, when it logs them.
    ``adjust(params)`` changes the gradients before each step (a federated client algorithm's hook)."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    model.train()
    total, n, steps = torch.zeros((), device=device), 0, 0
    for x, y in batch_iter:
        with autocast(device):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if adjust is not None:
            adjust([p for g in optimizer.param_groups for p in g["params"]])
        optimizer.step()
        total += loss.detach()
        n += len(y)
        steps += 1
    return total / max(steps, 1), n


@torch.inference_mode()
def evaluate(model, split: cifar.Split, args, device: torch.device, shard: bool = False) -> dict:
    """{loss, accuracy, n} of ``model`` on ``split`` (no augmentation).

    shard: under torchrun every rank scores every N-th batch (its share) and one all-reduce adds up the
    sums, so every rank returns the metrics of the whole split; call it on every rank then.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in cifar.eval_batches(split, args.eval_batch_size, args.image_size, shard=shard):
        with autocast(device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(-1) == y).sum()
    if shard:
        D.all_reduce_sum_([loss_sum, correct])  # a no-op in a single process
    n = len(split)
    return {"loss": float(loss_sum) / max(n, 1), "accuracy": float(correct) / max(n, 1), "n": n}


@torch.inference_mode()
def correct(model, split: cifar.Split, idx: torch.Tensor, args, device: torch.device) -> torch.Tensor:
    """bool [len(idx)]: whether ``model`` classifies each image ``split[idx]`` right (no augmentation)."""
    model.eval()
    out = []
    for lo in range(0, len(idx), args.eval_batch_size):
        sel = idx[lo:lo + args.eval_batch_size]
        x = cifar.augment(split.images[sel], args.image_size, train=False)
        with autocast(device):
            out.append(model(x).float().argmax(-1) == split.labels[sel])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=device)


def plateau(rows: list[dict], x: str, end: float, window: float = 0.2) -> dict:
    """The plateau check: validation accuracy at the end minus at the last evaluation at or before
    (1 - window) of the run (``plateau_change``, accuracy in [0, 1]); ``plateau_reached`` when it is
    under 0.01 in absolute value (1 point)."""
    start = (1 - window) * end
    before = [r for r in rows if r[x] <= start]
    if not rows or not before:
        return {"plateau_change": None, "plateau_reached": None}
    change = rows[-1]["val_accuracy"] - before[-1]["val_accuracy"]
    return {"plateau_change": change, "plateau_reached": abs(change) < 0.01}


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, final: float = 0.0) -> float:
    """Linear warmup for ``warmup`` steps, then cosine from ``peak`` to ``final`` at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))
