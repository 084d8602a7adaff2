"""Masked-LM pretraining of the tiny RoBERTa: the small-scale stand-in for RoBERTa's own pretraining.

A LoRA adapter and a head on a *random* frozen encoder barely learn (the README's first table), because
the adapter can only re-weight features the frozen base already computes. roberta-base / large come
pretrained; the tiny model gets the same treatment at a CPU budget: ``--pretrain_mlm_steps`` steps of
RoBERTa's masked-LM objective (15 % of the tokens chosen, 80 % of those replaced by <mask>, 10 % by a random
token, 10 % kept; dynamic masking) on unlabelled texts of the task, then LoRA fine-tuning on top.

The base depends only on its settings (tokenized corpus, tokenizer size, model shape, steps, rate, batch,
``--pretrain_mlm_seed``), not on the run's ``--seed`` or method, so it is trained once, saved with
``save_pretrained`` under ``<cache>/<key>/`` and reused by every run of a grid (a file lock makes
concurrent runs wait for the first one instead of training it twice). ``mlm.json`` next to the weights
records the masked-LM loss on a fixed held-out masking before and after training.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from common import checkpoint, cli
from common import seed as seeding
from lora_glue_fl import encoded
from lora_glue_fl.glue_tasks import Examples

VERSION = 1  # bump when the recipe below changes, so stale caches are not reused
MASK_PROB, HELD_OUT = 0.15, 256


def mask_tokens(ids: torch.Tensor, lengths: torch.Tensor, tokenizer, gen: torch.Generator):
    """RoBERTa's masking of a batch ``ids`` [B, T]: returns (inputs [B, T], targets [B, T], -100 = not scored).

    Special tokens (<s>, </s>, padding) are never chosen; at least one token per batch is.
    """
    B, T = ids.shape
    real = torch.arange(T)[None, :] < lengths[:, None]
    special = torch.zeros_like(real)
    for tid in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.cls_token_id,
                tokenizer.sep_token_id}:
        if tid is not None:
            special |= ids == tid
    candidate = real & ~special
    chosen = candidate & (torch.rand(B, T, generator=gen) < MASK_PROB)
    if not chosen.any() and candidate.any():  # a tiny batch: score at least one token
        chosen.view(-1)[candidate.view(-1).nonzero()[0]] = True
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    u = torch.rand(B, T, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (u < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (u >= 0.8) & (u < 0.9)
    inputs[swap] = torch.randint(len(tokenizer), (B, T), generator=gen)[swap]
    return inputs, targets


def mlm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy at the scored positions; the LM head runs on those rows only (a 50k vocabulary
    at every position would dominate the step on CPU)."""
    T = inputs.shape[1]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    hidden = model.roberta(input_ids=inputs, attention_mask=mask).last_hidden_state   # [B, T, H]
    pick = targets != -100
    logits = model.lm_head(hidden[pick])                                              # [M, V]
    return torch.nn.functional.cross_entropy(logits.float(), targets[pick])


def _held_out_loss(model, data, tokenizer, seed: int) -> float:
    n = min(HELD_OUT, len(data))
    idx = torch.arange(n)
    batch = data.batch(idx, "cpu")
    gen = torch.Generator().manual_seed(seeding.stream_seed(seed, "mlm-held-out"))
    inputs, targets = mask_tokens(batch["input_ids"], data.lengths[idx], tokenizer, gen)
    was = model.training
    model.eval()
    with torch.inference_mode():
        loss = float(mlm_loss(model, inputs, targets, data.lengths[idx]))
    model.train(was)
    return loss


def cache_key(data, tokenizer, max_seq_length: int, steps: int, lr: float, batch_size: int, seed: int) -> str:
    """Hash of everything the base depends on: the token ids it sees, vocabulary size, shape and recipe."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": VERSION, "vocab": len(tokenizer), "mask": tokenizer.mask_token_id, "tiny": encoded.TINY,
                         "T": max_seq_length, "steps": steps, "lr": lr, "bs": batch_size, "seed": seed},
                        sort_keys=True).encode())
    h.update(data.input_ids.numpy().tobytes())
    h.update(data.lengths.numpy().tobytes())
    return h.hexdigest()[:16]


def pretrain(tokenizer, texts: Examples, out_dir, *, max_seq_length: int, steps: int, lr: float = 1e-3,
             batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict:
    """Train a tiny ``RobertaForMaskedLM`` from scratch on ``texts`` and ``save_pretrained`` it to ``out_dir``.

    The first ``HELD_OUT`` texts are kept out of training and scored before and after (fixed masking).
    AdamW (weight decay 0.01), 6 % linear warm-up then linear decay, clipping 1.0, dynamic masking; batches,
    masks, dropout and the initialisation come from ``seed``. Returns the record written to ``mlm.json``.
    """
    from transformers import RobertaForMaskedLM

    data = encoded.encode(tokenizer, texts, max_seq_length)
    n_held = min(HELD_OUT, max(1, len(data) // 5))
    held = type(data)(data.input_ids[:n_held], data.lengths[:n_held], data.labels[:n_held])
    train_idx = torch.arange(n_held, len(data)) if len(data) > n_held else torch.arange(len(data))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.stream_seed(seed, "mlm-init"))
        model = RobertaForMaskedLM(encoded.tiny_config(tokenizer, max_seq_length))
        before = _held_out_loss(model, held, tokenizer, seed)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.98), eps=1e-6)
        warm = max(1, int(0.06 * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
        gen = torch.Generator().manual_seed(seeding.stream_seed(seed, "mlm-batches"))
        order, losses = torch.empty(0, dtype=torch.long), []
        model.train()
        bar = tqdm(range(steps), desc="masked-LM", disable=not progress)
        for _ in bar:
            if len(order) < batch_size:
                order = torch.cat([order, train_idx[torch.randperm(len(train_idx), generator=gen)]])
            b, order = order[:batch_size], order[batch_size:]
            batch = data.batch(b, "cpu")
            inputs, targets = mask_tokens(batch["input_ids"], data.lengths[b], tokenizer, gen)
            loss = mlm_loss(model, inputs, targets, data.lengths[b])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.set_postfix({"loss": f"{losses[-1]:.3f}"}, refresh=False)
        after = _held_out_loss(model, held, tokenizer, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    k = max(1, min(50, steps // 10))
    record = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "texts": len(data),
              "held_out": n_held, "held_out_loss_before": before, "held_out_loss_after": after,
              "train_loss_first": sum(losses[:k]) / k, "train_loss_last": sum(losses[-k:]) / k,
              "chance_loss": math.log(len(tokenizer))}
    (out_dir / "mlm.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def pretrained_base(tokenizer, texts: Examples, cache_root, *, max_seq_length: int, steps: int, lr: float = 1e-3,
                    batch_size: int = 64, seed: int = 0, quiet: bool = True) -> Path:
    """The cached masked-LM base for these settings (trained on first use); returns its folder."""
    data = encoded.encode(tokenizer, texts, max_seq_length)
    key = cache_key(data, tokenizer, max_seq_length, steps, lr, batch_size, seed)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run with the same key waits, then reuses
        if not (final / "mlm.json").is_file():
            tmp = root / f"{key}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            rec = pretrain(tokenizer, texts, tmp, max_seq_length=max_seq_length, steps=steps, lr=lr,
                           batch_size=batch_size, seed=seed, progress=not quiet)
            checkpoint.give_usual_permissions(tmp)  # save_pretrained's safetensors are 0600
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if not quiet:
                print(f"masked-LM base {final}: held-out loss {rec['held_out_loss_before']:.3f} -> "
                      f"{rec['held_out_loss_after']:.3f} ({steps} steps on {rec['texts']} texts)")
    return final


def base_for_args(args, tokenizer, train: Examples | None) -> Path:
    """:func:`pretrained_base` from the ``--pretrain_mlm_*`` flags of a script."""
    texts = train
    if args.pretrain_mlm_data_dir:
        from lora_glue_fl import glue_tasks
        texts = glue_tasks.load_glue(args.task_name, "dir", args.pretrain_mlm_data_dir)["train"]
    cli.check(texts is not None and len(texts) > 0, "--pretrain_mlm_steps needs training texts")
    if len(texts) > args.pretrain_mlm_max_texts:
        texts = texts.subset(range(args.pretrain_mlm_max_texts))
    cache = args.pretrain_mlm_cache or Path(args.out_dir) / "mlm_cache"
    return pretrained_base(tokenizer, texts, cache, max_seq_length=args.max_seq_length, steps=args.pretrain_mlm_steps,
                           lr=args.pretrain_mlm_lr, batch_size=args.pretrain_mlm_batch_size,
                           seed=args.pretrain_mlm_seed, quiet=args.quiet)
