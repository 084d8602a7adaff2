"""Pre-fetch roberta-base and roberta-large into the Hugging Face cache, so later runs work offline.

    python lora_glue_fl/download_roberta_models.py --hf_home ./hf_cache --revision main
    HF_HOME=./hf_cache HF_HUB_OFFLINE=1 python lora_glue_fl/fedavg_rounds.py --model_size base ...

Needs network access to the Hugging Face hub; fails with one line when there is none.
"""
from __future__ import annotations

import os
from pathlib import Path

from common import cli
from common.errors import first_line

MODELS = ("roberta-base", "roberta-large")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.add_argument("--hf_home", default=None, help="cache root (sets HF_HOME); default: the usual HF cache")
    p.add_argument("--revision", default="main", help="model revision / branch / tag")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="hub ids to fetch")
    return p


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    if args.hf_home:
        home = Path(args.hf_home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["HF_HOME"] = str(home)
    from huggingface_hub import snapshot_download  # after HF_HOME is set: the cache path is read at import
    paths = {}
    for mid in args.models:
        try:
            paths[mid] = snapshot_download(repo_id=mid, repo_type="model", revision=args.revision)
        except Exception as e:  # noqa: BLE001 -- offline, unknown repo or revision: many types
            raise cli.UsageError(f"cannot download {mid}@{args.revision} ({type(e).__name__}: {first_line(e)}); "
                                 f"check the network, the model id and --revision") from None
        print(f"cached {mid} at {paths[mid]}")
    return paths


if __name__ == "__main__":
    cli.run(main)
