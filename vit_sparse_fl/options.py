"""vit_sparse_fl's flags: the --quick parser of its training scripts (``ArgumentParser``), and the data and model
flags they share. Torch-free, so --help answers before torch loads (``common.cli``); what the flags mean at run
time is ``vit_sparse_fl.data``'s and ``vit_sparse_fl.experiment``'s.
"""
from __future__ import annotations

import argparse
import sys

from common import cli, config, flags

ARCHS = ("vit_small", "vit_tiny")  # experiment.ARCHS' configurations
MASK_STRATEGIES = ("least_sensitive", "most_sensitive", "lowest_magnitude", "highest_magnitude", "random")  # sparse
UNIT = flags.Number(float, 0.0, 1.0, high_open=True)        # [0, 1): dropout, label smoothing, momentum, sparsity
NON_NEGATIVE = flags.Number(float, 0.0)

# --quick: the tiny ViT on 10 classes of the embedded data, a ``common.config`` preset (defaults < --quick < YAML
# --config < command line); each script adds its own rounds / epochs
QUICK = dict(arch="vit_tiny", weights="none", image_size=32, num_classes=10, max_train=2000, max_test=500,
             batch_size=32, eval_batch_size=250, lr=0.05)


def given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags set on the command line or in the --config YAML (after a parse)."""
    tokens = {t.split("=", 1)[0] for t in argv if t.startswith("--")}
    return ({a.dest for a in parser._actions if tokens & set(a.option_strings)}
            | set(getattr(parser, "config_values", {})))


class ArgumentParser(cli.ArgumentParser):
    """``cli.ArgumentParser`` with the --quick preset whose plain ``parse_args`` is ``config.parse_with_config``;
    --help states both values of a preset flag. --quick's 10 classes give way to ``--classes`` and ag_news."""

    def __init__(self, *args, quick: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.presets, self._inner = {"quick": {**QUICK, **quick}}, False

    def parse_args(self, args=None, namespace=None):
        if self._inner:                                       # parse_with_config's own final parse
            return super().parse_args(args, namespace)
        argv = sys.argv[1:] if args is None else list(args)
        self._inner = True
        try:
            ns = config.parse_with_config(self, argv)
        finally:
            self._inner = False
        if (getattr(ns, "classes", None) or getattr(ns, "data", None) == "ag_news") \
                and "num_classes" not in given(self, argv):
            ns.num_classes = 0
        return ns

    def format_help(self) -> str:
        quick = self.presets["quick"]
        for a in self._actions:
            if a.dest in quick and a.default is not argparse.SUPPRESS and "--quick:" not in (a.help or ""):
                a.help = f"{a.help} (default: {a.default}; --quick: {quick[a.dest]})"
        return super().format_help()


def add_data_args(parser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="synthetic", choices=["synthetic", "cifar100", "ag_news"],
                   help="synthetic: embedded CIFAR-format data; cifar100: the pickles under --data-dir; ag_news: "
                        "the AG News CSV files under --data-dir, as token ids (--arch encoder)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding cifar-100-python/{train,test,meta} (ag_news: test.csv, train.csv if any)")
    g.add_argument("--max-length", type=flags.POSITIVE_INT, default=64,
                   help="--data ag_news: tokens per text (truncated / padded)")
    g.add_argument("--download", action="store_true", help="fetch the CIFAR-100 tarball into --data-dir")
    g.add_argument("--image-size", type=int, default=224, choices=[224, 160, 32],
                   help="resize to this many pixels (224 as DINO; 32: no resize)")
    g.add_argument("--val-fraction", type=flags.Number(float, 0.0, 1.0, low_open=True, high_open=True),
                   default=0.1, help="held-out share of the training set")
    g.add_argument("--split-seed", type=flags.SEED, default=0, help="seed of the validation split")
    g.add_argument("--num-classes", type=flags.COUNT, default=0, help="keep only classes 0..N-1 (0: all 100)")
    g.add_argument("--classes", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"),
                   help="keep classes FIRST..LAST-1, relabelled from 0 (e.g. 10 100 to pretrain on the 90 "
                        "classes a fine-tuning task on 0 10 never sees); replaces --num-classes")
    g.add_argument("--synthetic-per-class", type=flags.POSITIVE_INT, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                   help="--data synthetic: images per class in the train and test pickles (default 100 20)")
    g.add_argument("--max-train", type=flags.COUNT, default=0, help="use only the first N training images (0: all)")
    g.add_argument("--max-test", type=flags.COUNT, default=0, help="use only the first N test images (0: all)")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=64, help="training batch size")
    g.add_argument("--eval-batch-size", type=flags.POSITIVE_INT, default=256, help="evaluation batch size")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip during training")


def add_model_args(parser: argparse.ArgumentParser, *, lr: float, weight_decay: float) -> None:
    g = parser.add_argument_group("model and optimisation")
    g.add_argument("--arch", default="vit_small", choices=[*ARCHS, "encoder"],
                   help="vit_small: DINO ViT-S/16 (patch 16, 12 blocks, 6 heads, width 384); "
                        "vit_tiny: patch 4, width 48, 2 blocks, 3 heads; encoder: the pretrained text encoder "
                        "of --weights with mean pooling and a linear head (--data ag_news; vit_sparse_fl/text.py)")
    g.add_argument("--weights", default="dino",
                   help="backbone weights: 'dino' (torch hub cache / download), a path to "
                        "dino_deitsmall16_pretrain.pth, or 'none' for random initialisation; --arch encoder: "
                        "'minilm' (the 'pretrained' extra) or a Hugging Face encoder folder")
    g.add_argument("--freeze-layers", type=flags.COUNT, default=0,
                   help="freeze the patch embedding (encoder: the embeddings) and the first N transformer blocks")
    g.add_argument("--head-dropout", type=UNIT, default=0.1, help="dropout before the classifier head")
    g.add_argument("--label-smoothing", type=UNIT, default=0.1, help="label smoothing of the cross-entropy")
    g.add_argument("--lr", type=flags.POSITIVE, default=lr, help="peak learning rate of SGD")
    g.add_argument("--momentum", type=UNIT, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=weight_decay, help="SGD weight decay")
