"""What llm_noniid/pretrain.py runs once its flags are parsed: the WikiText articles (read, detokenized, split
90 / 5 / 5 by article), the settings key of the cached base, and the central training of the small GPT-2 with its
resumable checkpoint (``build``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path

import torch

from common import checkpoint as CK
from common import cli, export, memory, runlog
from common.checkpoint import save_checkpoint  # by name: the tests interrupt it
from common.engine import cosine_lr
from common.errors import read_text
from common.evaluate import perplexity, unigram_perplexity
from common.seed import get_rng_state, numpy_rng, seed_everything, set_rng_state
from common.text import lm_batch, lm_blocks, load_tokenizer
from llm_noniid.data import TITLE
from llm_noniid.model import lm_loss

VERSION = 1  # bump when the recipe changes, so stale bases are not reused
# flags that do not change the weights (--threads does, in the last bits: the key holds the threads used instead)
IGNORED = ("cache_dir", "threads", "text_files", "quiet", "quick", "config")
CHECKPOINT_KIND = "llm_noniid/pretrain"


# ----------------------------------------------------------------------------- text
_DETOK = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "), (" ; ", "; "),
          (" : ", ": "), (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")"), (" ! ", "! "), (" ? ", "? ")]


def detokenize(line: str) -> str:
    """Undo WikiText's tokenized spacing (``a @-@ b`` -> ``a-b``, ``x , y`` -> ``x, y``); ``<unk>`` stays."""
    for a, b in _DETOK:
        line = line.replace(a, b)
    return re.sub(r" ([.,;:!?])$", r"\1", line)


def read_articles(files: list[str]) -> list[tuple[str, str]]:
    """(title, text) of every article of the WikiText files, paragraphs joined by newlines; an article whose title
    was seen in an earlier file is skipped (the same split given twice, or raw and tokenized copies of it)."""
    out, seen = [], set()
    for f in files:
        path = Path(f)
        cli.check(path.is_file(), f"--text-files: {path} does not exist; expected WikiText files (wiki.*.raw)")
        lines = read_text(path, "WikiText", prefix="--text-files: ").splitlines()
        title, paras = None, []
        for line in [*lines, " = END = "]:
            s = line.strip()
            if TITLE.fullmatch(s):  # a top-level heading opens an article
                if title is not None and paras and title not in seen:
                    seen.add(title)
                    out.append((title, "\n".join(paras)))
                title, paras = s[2:-2].strip(), []
            elif s and not (s.startswith("= ") and s.endswith(" =")) and title is not None:
                paras.append(detokenize(s))
    cli.check(len(out) >= 3, f"--text-files hold {len(out)} articles; the train / validation / test split needs "
                             f"at least 3 ('= Title =' lines open them)")
    return out


def split_articles(articles: list, seed: int) -> dict[str, list]:
    """90 / 5 / 5 by article (at least one each), by a seeded permutation."""
    order = numpy_rng(seed, "articles").permutation(len(articles))
    n_eval = max(1, round(0.05 * len(articles)))
    parts = {"valid": order[:n_eval], "test": order[n_eval:2 * n_eval], "train": order[2 * n_eval:]}
    return {k: [articles[i] for i in sorted(v)] for k, v in parts.items()}


def stream(tok, articles: list[tuple[str, str]]) -> torch.Tensor:
    """The articles' tokens, each followed by the eos token -> LongTensor [n]."""
    encs = tok.backend_tokenizer.encode_batch([text for _, text in articles], add_special_tokens=False)
    return torch.tensor([i for e in encs for i in [*e.ids, tok.eos_token_id]], dtype=torch.long)


# ----------------------------------------------------------------------------- the base
def build(args) -> Path:
    """The cached base folder for these parsed flags, pretrained on first use; prints and returns it."""
    cli.check(args.n_embd % args.n_head == 0, f"--n-head {args.n_head} must divide --n-embd {args.n_embd}")
    check_memory(args)
    articles = read_articles(args.text_files)
    texts_hash = hashlib.sha256("\x00".join(f"{t}\x01{x}" for t, x in articles).encode()).hexdigest()[:16]
    if args.threads:
        torch.set_num_threads(args.threads)
    # the threads split the float sums, so two thread counts make two bases: each its own folder
    config = {"version": VERSION, "text": texts_hash, "torch_threads": torch.get_num_threads(),
              **{k: v for k, v in sorted(vars(args).items()) if k not in IGNORED}}
    key = CK.settings_key(config)
    final = CK.built_once(args.cache_dir, key, "pretrain.json",
                          lambda final: train_base(args, config, articles, final.with_name(f"{key}.run"), final))
    if not args.quiet:
        info = json.loads((final / "pretrain.json").read_text())
        print(f"base: {info['params'] / 1e6:.2f} M parameters, {info['train_tokens']:,} training tokens; test "
              f"perplexity {info['test_ppl']:.1f} (unigram {info['unigram_ppl']:.1f}, uniform "
              f"{info['uniform_ppl']:.0f}); pretrained in {info['seconds'] / 60:.1f} min")
    print(final)
    return final


def stop_diverged(work: Path, step: int, state: dict, saved: bool) -> None:
    """A non-finite loss or validation perplexity at ``step``: summary.json ``status: diverged`` in the work folder
    (``runlog.divergence``, as every training run), whose checkpoint keeps the last finite evaluation; exit 3."""
    fields, error = runlog.divergence(work, f"step {step}", "non-finite training loss or validation perplexity",
                                      f"step {state['step']}" if saved else None,
                                      rerun="rerun with another --lr (another base)")
    CK.atomic_write_json(work / runlog.SUMMARY_FILE, {**fields, "history": state["history"]})
    raise error


def check_memory(args) -> None:
    """The GPT-2 of these flags and one AdamW step fit in memory (``common.memory``), before any work."""
    def estimate(size: dict) -> dict:
        w, seq = size["--n-embd"], size["--seq-len"]
        params = (size["--vocab-size"] + seq) * w + size["--n-layer"] * 12 * w * w
        return memory.transformer(params=params, batch=size["--batch-size"], seq=seq, width=w, layers=size["--n-layer"],
                                  heads=args.n_head, vocab=size["--vocab-size"], inner=4 * w)

    memory.check_fits(estimate, {"--seq-len": args.seq_len, "--batch-size": args.batch_size, "--n-embd": args.n_embd,
                                 "--n-layer": args.n_layer, "--vocab-size": args.vocab_size}, "cpu",
                      what="the GPT-2 base")


def train_base(args, config: dict, articles: list, work: Path, final: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    started, cpu_started, load_started = time.perf_counter(), runlog.cpu_seconds(), runlog.load_average()
    parts = split_articles(articles, args.split_seed)
    work.mkdir(parents=True, exist_ok=True)
    train_file = CK.atomic_write_text(work / "train.txt", "\n".join(text for _, text in parts["train"]) + "\n")
    tok = load_tokenizer("bpe", train_files=[train_file], vocab_size=args.vocab_size, cache_dir=work)
    tok.model_max_length = args.seq_len
    tokens = {k: stream(tok, v) for k, v in parts.items()}
    blocks = {k: lm_blocks(v, args.seq_len) for k, v in tokens.items()}
    train_blocks = blocks["train"][:-1] if blocks["train"].shape[0] > 1 else blocks["train"]  # full blocks only
    evals = {k: [lm_batch(blocks[k][i:i + 32], tok.eos_token_id) for i in range(0, blocks[k].shape[0], 32)]
             for k in ("valid", "test")}

    seed_everything(args.seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=args.seq_len, n_embd=args.n_embd, n_layer=args.n_layer,
                     n_head=args.n_head, resid_pdrop=args.dropout, embd_pdrop=args.dropout,
                     attn_pdrop=args.dropout, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    state = {"step": 0, "history": [], "best": None, "best_ppl": math.inf, "seconds": 0.0}
    ckpt = work / "checkpoint.pt"
    if ckpt.is_file():  # resume at the last evaluation
        saved = CK.load_checkpoint(ckpt, CHECKPOINT_KIND)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        state = saved["state"]
    session = time.perf_counter()
    per_epoch = train_blocks.shape[0] // args.batch_size
    cli.check(per_epoch >= 1, f"the training articles hold {train_blocks.shape[0]} blocks of {args.seq_len} "
                              f"tokens, fewer than one batch of --batch-size {args.batch_size}")
    model.train()
    for step in range(state["step"], args.steps):
        epoch, i = divmod(step, per_epoch)
        order = numpy_rng(args.seed, "blocks", epoch).permutation(train_blocks.shape[0])
        batch = lm_batch(train_blocks[torch.as_tensor(order[i * args.batch_size:(i + 1) * args.batch_size])])
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, args.warmup_steps, 0.1 * args.lr)  # to 10% at the end
        loss = lm_loss(model, batch["input_ids"], batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val = perplexity(model, evals["valid"])["ppl"]  # in eval mode; the model's own flags restored after
            if not (math.isfinite(val) and math.isfinite(float(loss.detach()))):
                stop_diverged(work, step + 1, state, ckpt.is_file())
            state["history"].append({"step": step + 1, "train_loss": float(loss.detach()), "val_ppl": val})
            if val < state["best_ppl"]:
                state["best_ppl"], state["best"] = val, {k: v.clone() for k, v in model.state_dict().items()}
            state["step"] = step + 1
            state["seconds"] += time.perf_counter() - session
            session = time.perf_counter()
            if not args.quiet:
                print(f"  step {step + 1}/{args.steps}: train loss {float(loss.detach()):.3f}, validation perplexity "
                      f"{val:.1f} ({state['seconds'] / 60:.1f} min)", flush=True)
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "rng": get_rng_state(), "state": state}, CHECKPOINT_KIND)

    model.load_state_dict(state["best"])
    model.eval()
    test = perplexity(model, evals["test"])
    ref = unigram_perplexity(tokens["train"], blocks["test"], len(tok))
    shutil.rmtree(work / "folder", ignore_errors=True)
    out = export.save_model_dir(work, model, tok, info={"test_ppl": test["ppl"]}, name="folder")
    best = min(state["history"], key=lambda h: h["val_ppl"])
    CK.atomic_write_json(out / "pretrain.json", {
        "settings": config, "params": sum(p.numel() for p in model.parameters()),
        "articles": {k: len(v) for k, v in parts.items()}, "train_tokens": int(tokens["train"].numel()),
        "valid_tokens": int(tokens["valid"].numel()), "test_tokens": test["tokens"],
        "best_step": best["step"], "valid_ppl": best["val_ppl"], "test_ppl": test["ppl"],
        "unigram_ppl": ref["unigram_ppl"], "uniform_ppl": ref["uniform_ppl"], "history": state["history"],
        "seconds": round(state["seconds"], 1), "wall_seconds_last_session": round(time.perf_counter() - started, 1),
        "cpu_seconds_last_session": round(runlog.cpu_seconds() - cpu_started, 1), "load_start": load_started,
        "load_end": runlog.load_average(),
        "test_titles": [t for t, _ in parts["test"]]})
    shutil.rmtree(final, ignore_errors=True)
    out.replace(final)
    shutil.rmtree(work, ignore_errors=True)

