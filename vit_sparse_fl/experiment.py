"""What the training scripts share once their flags (``vit_sparse_fl.options``) are parsed: the model, local steps,
evaluation."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from common import cli, memory, report
from common import distributed as D
from common.evaluate import autocast
from vit_sparse_fl import data as cifar
from vit_sparse_fl.vit import VIT_SMALL, VIT_TINY, ViTClassifier, load_backbone_weights

ARCHS = {"vit_small": VIT_SMALL, "vit_tiny": VIT_TINY}
def validate_model_args(args) -> None:
    """What the flags' types cannot check alone (they refuse every number out of its range)."""
    text = args.arch == "encoder"
    cli.check(text == (args.data == "ag_news"), "--arch encoder and --data ag_news go together (token ids in, a text "
                                                f"encoder to read them); got --arch {args.arch} --data {args.data}")
    cli.check(not text or args.weights not in ("dino", "none", "random", ""),
              f"--arch encoder needs --weights minilm or a Hugging Face encoder folder, got {args.weights!r}")
    cli.check(text or args.freeze_layers <= ARCHS[args.arch].depth, f"--freeze-layers {args.freeze_layers} exceeds "
              f"the {ARCHS.get(args.arch, VIT_TINY).depth} blocks of {args.arch}")


def check_memory(args, num_classes: int, device: torch.device, examples: int) -> None:
    """A ViT of --arch and one training step fit in ``device``'s memory (``common.memory``); a batch takes at most
    the ``examples`` it draws from (``data.batches`` stops at the data)."""
    cfg = ARCHS[args.arch]
    w, tokens = cfg.embed_dim, (args.image_size // cfg.patch_size) ** 2 + 1

    def estimate(size: dict) -> dict:
        params = 3 * cfg.patch_size ** 2 * w + tokens * w + cfg.depth * 12 * w * w + w * num_classes
        return memory.transformer(params=params, batch=min(size["--batch-size"], examples), seq=tokens, width=w,
                                  layers=cfg.depth, heads=cfg.num_heads, vocab=num_classes, inner=4 * w)

    memory.check_fits(estimate, {"--batch-size": args.batch_size}, device, what=f"--arch {args.arch}")


def build_model(args, num_classes: int, device: torch.device) -> tuple[ViTClassifier, str]:
    """The classifier on ``device`` with the requested weights and frozen layers; (model, weights source)."""
    if args.arch == "encoder":
        from vit_sparse_fl import text
        model, source = text.build(args.weights, num_classes, args.head_dropout)
        cli.check(args.freeze_layers <= model.depth,
                  f"--freeze-layers {args.freeze_layers} exceeds the {model.depth} layers of {source}")
    else:
        model = ViTClassifier(replace(ARCHS[args.arch], num_classes=num_classes, head_dropout=args.head_dropout))
        source = load_backbone_weights(model, args.weights)
    model.freeze_layers(args.freeze_layers)
    return model.to(device), source


def train_steps(model, optimizer, batch_iter, *, label_smoothing: float, device: torch.device,
                lr: float | None = None, adjust=None) -> torch.Tensor:
    """One optimizer step per batch; the mean loss as a 0-d device tensor (not read back to the host).
    ``adjust(params)`` changes the gradients before each step (a federated client algorithm's hook)."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    model.train()
    total, steps = torch.zeros((), device=device), 0
    for x, y in batch_iter:
        with autocast(device):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if adjust is not None:
            adjust([p for g in optimizer.param_groups for p in g["params"]])
        optimizer.step()
        total += loss.detach()
        steps += 1
    return total / max(steps, 1)


@torch.inference_mode()
def evaluate(model, split: cifar.Split, args, device: torch.device, shard: bool = False) -> dict:
    """{loss, accuracy, n} of ``model`` on ``split`` (no augmentation). ``shard``: under torchrun every rank scores
    its share of the batches and gets the whole split's metrics (call it on every rank)."""
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
    for x, y in cifar.eval_batches(split.subset(idx), args.eval_batch_size, args.image_size):
        with autocast(device):
            out.append(model(x).float().argmax(-1) == y)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=device)


def save_model(model, run_path, args, *, info: dict, name: str = "model"):
    """``<run_path>/<name>/`` by ``vit.save`` or ``text.save``."""
    if args.arch == "encoder":
        from vit_sparse_fl import text
        return text.save(model, run_path, weights=args.weights, info=info, name=name)
    from vit_sparse_fl import vit
    return vit.save(model, run_path, image_size=args.image_size, info=info, name=name)


def end_run(run, args, summary: dict, metric: str, extra: str) -> dict:
    """Print the run's closing line (``common.report``) and release its directory; the summary with run_dir."""
    scored = f"{summary['test_images']} test {'texts' if args.arch == 'encoder' else 'images'}"
    report.print_ending(run.path, metric, summary["test_accuracy"], {"chance": summary["chance_accuracy"]},
                        extra=extra, scored=scored, figures=f"python plots/plot_vit.py --runs {args.out_dir}",
                        loader="vit_sparse_fl.text.load (the encoder alone: AutoModel.from_pretrained)"
                        if args.arch == "encoder" else
                        "AutoModelForImageClassification.from_pretrained or vit_sparse_fl.vit.load")
    run.release()
    return {**summary, "run_dir": str(run.path)}


def plateau(rows: list[dict], x: str, end: float) -> dict:
    """``plateau_change``: validation accuracy at the end minus at the last evaluation at or before 80 % of the
    run; ``plateau_reached``: under 0.01 (1 point) in absolute value."""
    before = [r for r in rows if r[x] <= 0.8 * end]
    if not before:
        return {"plateau_change": None, "plateau_reached": None}
    change = rows[-1]["val_accuracy"] - before[-1]["val_accuracy"]
    return {"plateau_change": change, "plateau_reached": abs(change) < 0.01}
