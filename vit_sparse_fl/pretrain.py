"""The pretrained base: centralized training on one part of the classes, cached, to fine-tune from on another.

    python vit_sparse_fl/pretrain.py --quick --classes 10 100 --synthetic-per-class 200 100 \\
        --total-steps 3000 --cache-dir runs/vit_base            # prints the path of base.pt
    python vit_sparse_fl/train_federated.py --quick --weights runs/vit_base/<key>/base.pt ...

The stand-in for DINO's ImageNet weights: a ViT trained by ``train_centralized`` on classes the fine-tuning task
never sees. It depends only on its settings, so it is trained once into ``<cache-dir>/<key>/`` (a concurrent
caller waits for it) and reused: ``base.pt`` is the best-validation model (loadable with ``--weights``),
``base.json`` its settings, accuracies and run directory.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from common import cli, flags
from common.checkpoint import atomic_write_json, built_once, settings_key
from vit_sparse_fl import options, train_centralized

VERSION = 1  # bump when the recipe changes, so stale bases are not reused
# flags that do not change the trained weights
IGNORED = ("out_dir", "run_name", "quiet", "resume", "device", "compile", "compile_mode", "compile_backend",
           "cache_dir", "eval_batch_size", "overwrite", "extend", "report_to", "config", "checkpoint_every")
# flags --quick set after parsing before it became a preset: None in the key unless given, so cached bases keep it
UNSET_UNLESS_GIVEN = ("arch", "weights", "image_size", "data", "num_classes", "max_train", "max_test", "batch_size",
                      "lr", "epochs", "warmup_epochs")
# flags added after bases were cached: left out of the key at their default, so those bases keep their keys
ADDED_LATER = ("max_length",)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = train_centralized.get_args_parser(add_help=add_help)
    parser.description, parser.epilog = __doc__.split("\n\n")[0], cli.examples(__doc__)
    parser.add_argument("--cache-dir", type=flags.FOLDER, default="runs/vit_base",
                        help="folder of cached bases, one sub-folder per settings key")
    return parser


check_args = train_centralized.check_args  # the checks of its arguments alone (common.jobs: a grid checks its runs)


def base_settings(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """(the parsed flags, the settings that shape the base: what its key hashes)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    given = options.given(parser, argv)
    return args, {k: None if k in UNSET_UNLESS_GIVEN and k not in given else v
                  for k, v in sorted(vars(args).items())
                  if k not in IGNORED and not (k in ADDED_LATER and v == parser.get_default(k))}


def cache_key(settings: dict) -> str:
    return settings_key({"version": VERSION, **settings})


def pretrained_base(argv: list[str]) -> Path:
    """base.pt for these train_centralized flags (plus --cache-dir), trained on first use; returns its path."""
    args, settings = base_settings(argv)
    key = cache_key(settings)
    root = Path(args.cache_dir)

    def build(final: Path) -> None:
        run_argv = _drop_flag([a for a in argv if a != "--resume"], "--cache-dir")
        # --resume: a base interrupted mid-training continues from its checkpoint (a fresh one starts)
        summary = train_centralized.main([*run_argv, "--out-dir", str(root), "--run-name", f"{key}.run",
                                          "--keep-best", "1", "--resume"])
        best = Path(summary["run_dir"]) / summary["best_checkpoints"][0]
        tmp = root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(best, tmp / "base.pt")
        atomic_write_json(tmp / "base.json", {"key": key, "version": VERSION, "argv": run_argv,
                                              "settings": settings, "summary": summary})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    return built_once(root, key, "base.pt", build) / "base.pt"


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    """argv without ``flag VALUE`` / ``flag=VALUE`` (both spellings of the name)."""
    names, out, rest = {flag, flag.replace("-", "_").replace("__", "--")}, [], iter(argv)
    for a in rest:
        if a in names:
            next(rest, None)                                 # its value
        elif a.split("=", 1)[0] not in names:
            out.append(a)
    return out


def main(argv=None) -> dict:
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    path = pretrained_base(argv)
    record = json.loads((path.parent / "base.json").read_text())
    print(path)
    return {"path": str(path), **record}


if __name__ == "__main__":
    cli.run(main)
