"""Multi-round FedAvg of LoRA adapters for an encoder (RoBERTa, BERT, ...) on a GLUE task: broadcast -> train -> merge.

    python lora_glue_fl/fedavg_rounds.py --quick                       # tiny RoBERTa, embedded SST-2-like task
    python lora_glue_fl/make_shards.py --task_name sst2 --k 10 --mode iid --out_dir shards/sst2_iid_k10
    python lora_glue_fl/fedavg_rounds.py --model_size base --task_name sst2 --shard_dir shards/sst2_iid_k10 \\
        --rounds 5 --svd_rank 8 --eval_each_round

Every round the sampled clients (--participation-rate / --clients-per-round; default every client) train the
previous round's fused adapter (trainable: the source froze it) and head; the server merges their adapters
(lora_glue_fl/adapters.py) and averages the heads, weighted by shard sizes. A round holds, merges and (when asked)
writes only its own clients' adapters. The rounds run on ``common.engine`` (``LoraTask``), also under ``torchrun``.
The algorithm, the outputs and the distributed run: lora_glue_fl/README.md.
"""
from __future__ import annotations

import argparse

from common import algorithm_flags, cli, flags
from lora_glue_fl import options

# --quick: it learns, in seconds (defaults < --quick < YAML < command line)
QUICK = dict(model_size="tiny", max_seq_length=48, max_train_samples=1000, max_eval_samples=300, rounds=2,
             local_epochs=3.0, batch_size=16, learning_rate=2e-2, tokenizer_vocab_size=1000, lora_r=4, lora_alpha=4.0,
             svd_rank=4, target_modules=["query", "value", "word_embeddings"])


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK}
    g = p.add_argument_group("task and data")
    options.add_task_arg(g)
    options.add_data_args(g)
    g.add_argument("--max_train_samples", type=flags.POSITIVE_INT, default=None,
                   help="use the first N training examples (with --partition or --quick; default --quick: 1000)")
    options.add_model_args(p)
    g = p.add_argument_group("federation")
    g.add_argument("--shard_dir", default=None, help="folder of client_<i>.json manifests from make_shards.py "
                                                     "(--quick without it: 3 iid clients)")
    g.add_argument("--partition", choices=options.SHARD_MODES, default=None,
                   help="split the training split here instead of reading --shard_dir: make_shards.py's --mode "
                        "(with --num-clients clients, default 3; --quick alone: iid)")
    g.add_argument("--num-clients", type=flags.POSITIVE_INT, default=None,
                   help="clients of --partition (default 3; with --shard_dir its manifests are the clients)")
    g.add_argument("--rounds", type=flags.POSITIVE_INT, default=5, help="communication rounds")
    g.add_argument("--participation-rate", type=flags.FRACTION, default=1.0,
                   help="fraction of the clients sampled each round (max(1, round(C K)) of them, from the seed's "
                        "stream); a round's cost follows its clients, not the population")
    flags.add_clients_per_round(g)
    g = p.add_argument_group("local training")
    g.add_argument("--local_epochs", type=flags.EPOCHS, default=1.0, help="epochs over its shard per client a round")
    g.add_argument("--local-steps", type=flags.POSITIVE_INT, default=None,
                   help="exactly this many optimizer steps per client per round instead of --local_epochs")
    g.add_argument("--batch_size", type=flags.POSITIVE_INT, default=32, help="local batch size")
    g.add_argument("--learning_rate", type=flags.POSITIVE, default=2e-4,
                   help="local AdamW learning rate (linear decay)")
    g = p.add_argument_group("server merge")
    g.add_argument("--aggregation", choices=options.MERGES, default=None,
                   help="svd: truncated SVD of the weighted mean dW; naive: average A and B; exact: stacked "
                        "factors (rank grows to the sum of client ranks). Default svd (naive with --skip_svd)")
    g.add_argument("--skip_svd", action="store_true", help="the source's flag for --aggregation naive")
    g.add_argument("--svd_rank", type=flags.POSITIVE_INT, default=8, help="rank of the fused adapter (svd)")
    g.add_argument("--alpha", type=flags.POSITIVE, default=None,
                   help="lora_alpha of the fused adapter (default: its rank)")
    g.add_argument("--init_adapter", default=None, help="adapter folder to broadcast in round 1 (default: fresh LoRA)")
    options.add_lora_args(p, "rank of the clients' adapters in round 1", "lora_alpha of the round-1 adapters",
                           "; --quick: query value word_embeddings")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_each_round", action="store_true", help="evaluate the fused model after every round "
                                                                   "(the last round is always evaluated)")
    g.add_argument("--no_validation", action="store_true",
                   help="never score the validation split, only the selection split (selection.tsv in --data_dir): "
                        "the runs that choose a learning rate")
    g.add_argument("--eval_clients", action="store_true", help="also evaluate every client's model")
    g.add_argument("--eval_batch_size", type=flags.POSITIVE_INT, default=32, help="evaluation batch size")
    g.add_argument("--max_eval_samples", type=flags.POSITIVE_INT, default=None,
                   help="evaluate on the first N validation examples")
    g.add_argument("--save_client_adapters", choices=["all", "last", "none"], default="none",
                   help="which rounds write their clients' adapters, round_<k>/client_<i>/adapter (i: the client's "
                        "number; fused adapters are always kept): all, the last (fedavg_merge.py's input), or none")
    algorithm_flags.add_algorithm_args(p, client_opt_state=None, scaffold=options.NO_SCAFFOLD,
                                       clustering=options.NO_CLUSTERING)
    g = cli.add_run_args(p, seed=42)
    g.add_argument("--output_root", dest="out_dir", default=argparse.SUPPRESS, help="the source's name for --out-dir")
    return p


def resolve_args(args):
    """Fill defaults that depend on other flags, then validate, one line per problem (``federated.resolve_args``;
    common.jobs: a grid checks its runs)."""
    from lora_glue_fl import federated

    return federated.resolve_args(args)


def parse_args(argv=None):
    """defaults < --quick < YAML (--config) < command line, then the checks."""
    return resolve_args(cli.parse(get_args_parser(), argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from common import distributed as D  # torch and the run's modules load once the arguments are parsed
    from lora_glue_fl import federated

    with D.process_group():
        return federated.run(args)


if __name__ == "__main__":
    cli.run(main)
