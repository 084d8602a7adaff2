"""Full fine-tuning of an encoder on one GLUE task, without LoRA (or zero-shot evaluation with --do_eval alone).

    python lora_glue_fl/baseline_run.py --quick
    python lora_glue_fl/baseline_run.py --model_size base --task_name sst2 --do_train --do_eval --learning_rate 2e-5

The same run as main_glue_lora.py with every parameter trainable: same data, tokenizer, loop, metrics and
run directory; the fine-tuned model is saved with save_pretrained to <run dir>/model.
"""
from __future__ import annotations

from common import cli
from lora_glue_fl import main_glue_lora


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = main_glue_lora.get_args_parser(add_help, lora=False)
    p.description, p.epilog = __doc__.split("\n")[0], cli.examples(__doc__)
    return p


resolve_args = main_glue_lora.resolve_args


def main(argv=None) -> dict:
    return main_glue_lora.run(cli.parse(get_args_parser(), argv), lora=False)


if __name__ == "__main__":
    cli.run(main)
