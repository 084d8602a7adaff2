"""mamba_fl's flags: the model, data, optimizer and evaluation flags its scripts share, and the federated scripts'
parser (``federated_parser``). Torch-free, so --help answers before torch loads (``common.cli``); what the flags
mean at run time is ``mamba_fl.model``'s, ``mamba_fl.lmdata``'s and ``mamba_fl.federated``'s.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from common import algorithm_flags, cli, flags

CONFIGS = {f"pure_ssm_{n}_layer": n for n in (1, 2, 4)}
SGD_LR = 1.0  # plain SGD's default rate (an AdamW rate leaves SGD near its initial loss)
# --quick: a federated run of a few rounds takes seconds on 2 CPU cores (the scripts add their run lengths)
MODEL_QUICK = {"d_model": 64, "d_state": 16, "head_dim": 16, "sequence_length": 64, "eval_blocks": 32,
               "vocab_size": 2048, "sample_tokens": 8}
# --quick of the federated scripts: the model's, and run lengths; the Fisher and entropy samples too, read only by those
FEDERATED_QUICK = MODEL_QUICK | {"rounds": 64, "eval_every": 16, "fisher_samples": 4, "entropy_blocks": 16}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model (Mamba2, trained from scratch)")
    g.add_argument("--layers", type=int, choices=(1, 2, 4), default=None,
                   help="number of Mamba2 blocks (the source compared 1, 2 and 4); default 1")
    g.add_argument("--model-config", default=None,
                   help="source config name, pure_ssm_{1,2,4}_layer; same as --layers N (the old spelling "
                        "--config pure_ssm_N_layer still works; --config FILE.yaml reads flag values)")
    g.add_argument("--d-model", type=flags.POSITIVE_INT, default=512, help="hidden size (--quick: 64)")
    g.add_argument("--d-state", type=flags.POSITIVE_INT, default=128, help="SSM state size N (--quick: 16)")
    g.add_argument("--head-dim", type=flags.POSITIVE_INT, default=64, help="SSM head dimension P (--quick: 16)")
    g.add_argument("--expand", type=flags.POSITIVE_INT, default=2, help="inner width = expand * d_model")
    g.add_argument("--d-conv", type=flags.POSITIVE_INT, default=4, help="causal depthwise convolution width")
    g.add_argument("--n-groups", type=flags.POSITIVE_INT, default=1, help="groups sharing B and C (mamba-ssm: 1)")
    g.add_argument("--chunk-size", type=flags.POSITIVE_INT, default=None,
                   help="SSD chunk length (default min(256, sequence length)); the result does not depend on it, "
                        "but the PyTorch path pads each sequence to a multiple and costs O(chunk^2) per chunk")
    g.add_argument("--kernels", choices=("auto", "torch"), default="auto",
                   help="auto: the mamba-ssm / causal-conv1d kernels on CUDA when installed; torch: the PyTorch "
                        "reference path everywhere (to compare the two)")
    g.add_argument("--no-tie-embeddings", action="store_true",
                   help="separate output head (the source tied input and output embeddings)")


def config_legacy(value) -> dict | None:
    """``parser.config_legacy`` for ``common.config``: the old ``--config pure_ssm_N_layer`` means --model-config."""
    if isinstance(value, str) and value.startswith("pure_ssm_") and not value.endswith((".yaml", ".yml")):
        return {"model_config": value}
    return None


def add_data_args(parser: argparse.ArgumentParser, *, batch_size: int, sharding: bool) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "wikitext2"), default="synthetic",
                   help="synthetic: the embedded topic-structured WikiText-format source (offline); "
                        "wikitext2: Hugging Face wikitext-2-raw-v1 (needs the hub or --cache-dir)")
    g.add_argument("--data-dir", default=None,
                   help="folder with wiki.train.raw and wiki.valid.raw (raw WikiText format); overrides --data")
    g.add_argument("--cache-dir", type=flags.CACHE_FOLDER, default=None,
                   help="cache for datasets, tokenizers and token streams (default $FEDLAB_CACHE if set, else "
                        "<out-dir>/cache); the run's own tokenizer is also saved in <run>/model")
    g.add_argument("--tokenizer", default="auto",
                   help="auto (gpt2 for wikitext2, bpe otherwise) | gpt2 (hub/cache) | bpe (byte-level BPE trained on "
                        "the training split) | word (one token per word) | a local folder with vocab.json + merges.txt")
    g.add_argument("--vocab-size", type=flags.POSITIVE_INT, default=8192,
                   help="vocabulary of a trained bpe/word tokenizer; large enough that words are single tokens")
    g.add_argument("--sequence-length", type=flags.Number(int, 2), default=256, help="tokens per block (--quick: 64)")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=batch_size, help="blocks per optimizer step")
    if sharding:
        g.add_argument("--shard", choices=("contiguous", "iid", "topic"), default="contiguous",
                       help="client split of the training blocks: contiguous (the source), iid, or topic "
                            "(clients own whole topics: the synthetic source's, or on real text article "
                            "clusters, --topic-clusters of them, dealt out largest first)")
        flags.alias(g, "--partition", dest="shard", of="--shard", choices=("contiguous", "iid", "topic"))
        g.add_argument("--topic-clusters", type=flags.COUNT, default=0,
                       help="--shard topic on real text: cluster the training articles into this many topics "
                            "(tf-idf k-means, common.shard.document_topics; 0: twice --num-clients)")


def add_optimizer_args(group, *, who: str) -> None:
    """--optimizer / --lr / --weight-decay, the same in central.py and the federated scripts."""
    group.add_argument("--optimizer", choices=("adamw", "sgd"), default=None,
                       help=f"{who} optimizer: adamw (the source; the default) or plain sgd (no momentum, no "
                            f"weight decay)")
    group.add_argument("--lr", type=flags.POSITIVE, default=None,
                       help=f"{who} learning rate (default: adamw 5e-4, the source's for d_model 512, --quick: "
                            f"1e-2; sgd {SGD_LR:g}, as the synthetic grid's plain-SGD arm)")
    group.add_argument("--weight-decay", type=flags.Number(float, 0), default=0.01, help=f"{who} AdamW weight decay")


def add_eval_args(parser: argparse.ArgumentParser, *, deltas_help: str) -> None:
    """Evaluation and artifact flags shared by central.py and the federated driver."""
    g = parser.add_argument_group("evaluation and artifacts")
    g.add_argument("--eval-blocks", type=flags.COUNT, default=0,
                   help="validate on the first N validation blocks (0: all; --quick: 32)")
    g.add_argument("--prompt", default="The", help="prompt of the greedy sample logged at each evaluation")
    g.add_argument("--sample-tokens", type=flags.COUNT, default=30, help="tokens in the greedy sample (0: none)")
    g.add_argument("--patience", type=flags.COUNT, default=0,
                   help="stop at the plateau: after this many evaluations in a row without a validation perplexity "
                        "--min-improvement below the last improvement (0: run the whole budget); the run then "
                        "reports and publishes its best-validation model")
    g.add_argument("--min-improvement", type=flags.Number(float, 0, 1, high_open=True), default=0.01,
                   help="relative improvement of validation perplexity that counts for --patience")
    g.add_argument("--test", action="store_true",
                   help="after training, score the best-validation model on --data-dir's wiki.test.raw (read only "
                        "then; split_wikitext.py --test-fraction writes it)")
    g.add_argument("--budget-at", type=flags.POSITIVE_INT, default=None,
                   help="also keep the best-validation model of the evaluations up to this step (central) or round "
                        "(federated) and score it too under --test (budget_test_*): the equal-compute result of "
                        "the shorter run with the same settings, of which this run is the continuation; "
                        "--patience does not stop a run before it")
    g.add_argument("--save-deltas", action="store_true", help=deltas_help)
    g.add_argument("--delta-tensors", default="mixer.in_proj.weight,mixer.out_proj.weight",
                   help="comma-separated layer tensor names saved by --save-deltas (every layer)")


def federated_parser(method: str, doc: str, add_help: bool = True, server_opt: str = "fedavg",
                     aggregator: str = "mean") -> cli.ArgumentParser:
    """The parser of fed_avg.py, fed_momentum.py, fed_entropy.py and fed_fisher.py (``doc``: the script's docstring,
    whose commands are its examples); their run is ``mamba_fl.federated``."""
    p = cli.ArgumentParser(description=f"Federated Mamba2 language model: {method}", add_help=add_help,
                           epilog=cli.examples(doc))
    p.presets = {"quick": FEDERATED_QUICK}
    add_model_args(p)
    add_data_args(p, batch_size=4, sharding=True)
    g = cli.add_fed_args(p, num_clients=4, rounds=None, eval_every=30,
                         rounds_help=" (default: enough for --n-epochs passes of the mean client over its shard)")
    g.add_argument("--val-freq", dest="eval_every", type=flags.POSITIVE_INT, default=argparse.SUPPRESS,
                   help="the source's name for --eval-every (rounds between evaluations, default 30)")
    g.add_argument("--n-epochs", type=flags.EPOCHS, default=1.0,
                   help="sets --rounds when it is not given: rounds so each client, taking part in the share of "
                        "rounds that --participation-rate gives it, draws as many blocks as its shard holds this many "
                        "times (each round's blocks: a fresh permutation of the shard, so a pass in expectation)")
    flags.add_clients_per_round(g)
    g = p.add_argument_group("local training")
    g.add_argument("--local-updates", type=flags.POSITIVE_INT, default=1, help="optimizer steps per client per round")
    flags.alias(g, "--local-steps", dest="local_updates", of="--local-updates", type=flags.POSITIVE_INT)
    add_optimizer_args(g, who="client (sgd with --algorithm scaffold, fednova, or feddyn under --client-opt-state "
                                "persist)")
    g.add_argument("--holdout-fraction", type=flags.Number(float, 0, 1, high_open=True), default=None,
                   help="fraction of each client's blocks held out of training (--aggregator entropy measures on "
                        "it; default 0.1 with it, else 0)")
    g = algorithm_flags.add_algorithm_args(p, server_opt=server_opt, momentum_form="ema", client_opt_state="persist",
                                           aggregator=aggregator)
    g.add_argument("--entropy-blocks", type=flags.COUNT, default=0,
                   help="--aggregator entropy: measure H_k on the first N held-out blocks of each client (0: all; "
                        "--quick: 16)")
    algorithm_flags.add_fisher_stat_args(g)
    add_eval_args(p, deltas_help="save .npz snapshots (server) and deltas (server, clients) at each evaluation")
    cli.add_run_args(p)
    p.config_legacy = config_legacy
    return p


@dataclass(frozen=True)
class Script:
    """A script's name for its runs and kind, and the defaults its run names leave out (``engine.run_name_tags``);
    ``tags``: run-name settings of its own, before the shared ones."""
    name: str
    script: str
    server: str = "fedavg"
    aggregator: str = "mean"
    tags: Callable[[argparse.Namespace], dict] = lambda args: {}
