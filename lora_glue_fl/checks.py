"""Checks shared by the subproject's training scripts, run before a run directory is touched (nonsense values
are refused, never clamped), and the data fingerprint ``--resume`` compares (``common.runlog.data_fingerprint``).
"""
from __future__ import annotations

from pathlib import Path

from common import cli, pretrained, runlog
from lora_glue_fl import glue_tasks


def common_args(args) -> None:
    """What the shared flags' argparse types (``flags.POSITIVE_INT``: 0 is refused, not taken as "all") cannot
    check: with --quick, a --lora_r / --svd_rank above the tiny model's width is refused, not capped; a model or
    tokenizer folder that names code or holds corrupt files (``pretrained.check_folder``) is refused."""
    if getattr(args, "quick", False):
        from lora_glue_fl.modeling import TINY
        for name in ("lora_r", "svd_rank"):
            value = getattr(args, name, None)
            cli.check(value is None or value <= TINY["hidden_size"], f"--{name} {value} exceeds the hidden size "
                      f"{TINY['hidden_size']} of --quick's tiny model; use at most {TINY['hidden_size']}")
    for folder in (getattr(args, "model_name_or_path", None), getattr(args, "tokenizer", None)):
        if folder and Path(folder).is_dir():
            pretrained.check_folder(folder)  # refused before the run directory is made


def source_tag(args) -> str | None:
    """The data source for default run names: None for the embedded data, else hf or data-<folder>."""
    if getattr(args, "data_dir", None):
        return f"data-{Path(args.data_dir).resolve().name}"
    return None if args.data == "synthetic" else args.data


def rank_fits(model, rank: int, flag: str) -> None:
    """A LoRA rank cannot exceed the width of the layers it adapts (the hidden size of the encoder)."""
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    cli.check(width is None or rank <= width,
              f"{flag} {rank} exceeds the hidden size {width} of the model's layers; use at most {width}")


def fingerprint(task_name: str, data: str, data_dir, splits: dict, shard_dir=None) -> dict:
    """What the run read: the task's TSV files (``dir``, ``synthetic``) or the examples' text (``hf``), the
    client manifests of ``shard_dir``, and the size of every split used."""
    sizes = {name: len(ex) for name, ex in splits.items()}
    if data in ("dir", "synthetic") or (data == "hf" and data_dir is not None):
        from common import synthetic
        folder = Path(synthetic.ensure(f"glue-{task_name}") if data == "synthetic" else data_dir)
        files = [folder / glue_tasks.TSV_FILES[s]
                 for s in ("train", *glue_tasks.get_task(task_name).eval_splits, glue_tasks.SELECTION)]
        fp = runlog.data_fingerprint(data, folder if data != "synthetic" else None,
                                     files=[f for f in files if f.is_file()], splits=sizes)
    else:
        texts = {name: "\n".join(f"{a}\t{b}\t{y}" for a, b, y in zip(
            ex.text_a, ex.text_b or [""] * len(ex.text_a), [str(v) for v in ex.label])) for name, ex in splits.items()}
        fp = runlog.data_fingerprint(data, texts=texts, splits=sizes)
    if shard_dir is not None:
        manifests = sorted(Path(shard_dir).glob("client_*.json"))
        fp["files"].update({f"shards/{k}": v for k, v in
                            runlog.data_fingerprint("shards", shard_dir, files=manifests)["files"].items()})
        fp["shard_dir"] = runlog.portable(str(Path(shard_dir).resolve()))
    return fp
