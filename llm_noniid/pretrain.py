"""A pretrained causal LM made here, once: a small GPT-2 trained centrally on WikiText text, saved as a Hugging Face
folder that ``train.py --model <folder>`` fine-tunes with LoRA like any hub model.

    python llm_noniid/pretrain.py                     # about 13 min on 2 idle cores; prints the folder
    python llm_noniid/pretrain.py --quick --cache-dir runs/llm_base_quick   # a tiny base in seconds, as the tests use
    python llm_noniid/train.py --model <folder> --data ag_news --data-dir <split> --lora-r 8 ...

No pretrained weights can be downloaded here. The recipe (WikiText articles split 90 / 5 / 5, a byte-level BPE
fitted on the training articles, AdamW with warm-up and cosine decay, the best validation checkpoint kept): README.
The folder is cached under ``<cache-dir>/<key>/`` by a key of the settings, the text and the torch threads (their
count changes the float sums); a file lock makes a concurrent caller wait; ``pretrain.json`` beside the weights; an
interrupted pretraining resumes from ``<key>.run/checkpoint.pt`` at its last evaluation, bit for bit.
"""
from __future__ import annotations

from pathlib import Path

from common import cli, flags
from common.config import add_config_arg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_FILES = (SHARED / "wikitext2_raw" / "wiki.test.raw", SHARED / "wikitext2_tokenized" / "valid.txt")
# --quick: a tiny model for the tests (seconds)
QUICK = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=400, seq_len=32, batch_size=8, steps=40, eval_every=20,
             warmup_steps=4)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK}
    p.add_argument("--text-files", nargs="+", default=[str(f) for f in DEFAULT_FILES],
                   help="WikiText files (raw or tokenized layout; a user's full WikiText-2: wiki.train.raw "
                        "wiki.valid.raw) (default: the WikiText-2 files of shared/data next to the repository)")
    p.add_argument("--cache-dir", type=flags.FOLDER, default="runs/llm_base",
                   help="folder of cached bases, one sub-folder per key")
    add_config_arg(p)  # its values are in the key; the file's name is not
    p.add_argument("--n-layer", type=flags.POSITIVE_INT, default=4, help="transformer blocks")
    p.add_argument("--n-embd", type=flags.POSITIVE_INT, default=192, help="width")
    p.add_argument("--n-head", type=flags.POSITIVE_INT, default=3, help="attention heads (divide --n-embd)")
    p.add_argument("--vocab-size", type=flags.Number(int, 300), default=4096,
                   help="byte-level BPE vocabulary (at least 300: 256 bytes + merges)")
    p.add_argument("--seq-len", type=flags.POSITIVE_INT, default=128, help="block length (the model's positions)")
    p.add_argument("--dropout", type=flags.Number(float, 0, 1, high_open=True), default=0.1,
                   help="residual, embedding and attention dropout")
    p.add_argument("--batch-size", type=flags.POSITIVE_INT, default=16, help="blocks per step")
    p.add_argument("--steps", type=flags.POSITIVE_INT, default=2000, help="optimizer steps")
    p.add_argument("--lr", type=flags.POSITIVE, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=flags.Number(float, 0), default=0.1,
                   help="AdamW weight decay (matrices only)")
    p.add_argument("--warmup-steps", type=flags.COUNT, default=100, help="linear warm-up, then cosine to 10%%")
    p.add_argument("--eval-every", type=flags.POSITIVE_INT, default=200, help="validation (and checkpoint) interval")
    p.add_argument("--split-seed", type=flags.SEED, default=0, help="seed of the article split")
    p.add_argument("--seed", type=flags.SEED, default=0, help="seed of the initialisation, block order and dropout")
    p.add_argument("--threads", type=flags.COUNT, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a tiny model for a check in seconds (" +
                   ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--quiet", action="store_true", help="print only the folder")
    return p


# ----------------------------------------------------------------------------- the base
def pretrained_base(argv: list[str] | None = None) -> Path:
    """The cached base folder for these flags, pretrained on first use; returns it."""
    args = cli.parse(get_args_parser(), argv)
    from llm_noniid import pretraining  # torch and the run's modules load once the arguments are parsed

    return pretraining.build(args)


main = pretrained_base


if __name__ == "__main__":
    cli.run(main)
