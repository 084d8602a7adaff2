"""Federated LoRA fine-tuning of a causal LM under extreme non-IID splits: FedAvg / FedProx / SCAFFOLD
(and FedAvgM / FedAdam), per-round drift metrics and failure-mode detection.

    python llm_noniid/train.py --quick
    python llm_noniid/train.py --algorithm scaffold --local-optimizer sgd --learning-rate 0.05 \\
        --partition topic_skew --alpha 0.1 --num-rounds 50 --num-clients 10 --config llm_noniid/configs/default.yaml

Writes <out-dir>/<run-name>/ with args.json, metrics.jsonl (one row per round), summary.json (final and best
perplexity, detected failure modes and the round they appeared), checkpoint.pt, partition.json.
"""
from __future__ import annotations

from common import algorithm_flags, cli, flags
from llm_noniid import options

# --quick: the random tiny model trains from scratch, long enough to end well below the unigram (about 15 s);
# FedFisher's sample (read only with --aggregator fisher) small
QUICK = dict(model="tiny-gpt2", data="synthetic", num_rounds=16, num_clients=4, max_train_examples=240,
             max_eval_examples=48, seq_len=32, batch_size=8, max_local_steps=8, bpe_vocab_size=512,
             learning_rate=1.0, local_optimizer="sgd", lora_r=0, fisher_samples=8)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK}
    p.add_argument("--config", default=None, help="YAML file of flag: value lines (command-line flags override it)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic",
                   help="ag_news | wikitext | synthetic (embedded topic-structured AG News)")
    g.add_argument("--data-dir", default=None, help="folder with the original files (AG News train.csv/test.csv, "
                   "WikiText wiki.train.raw/wiki.valid.raw); default: the Hugging Face hub")
    g.add_argument("--cache-dir", type=flags.CACHE_FOLDER, default=None,
                   help="Hugging Face cache folder for models and datasets")
    g.add_argument("--max-train-examples", type=flags.COUNT, default=0,
                   help="random subset of the training texts (0: all)")
    g.add_argument("--max-eval-examples", type=flags.COUNT, default=1000,
                   help="random subset of validation texts (0: all)")
    g.add_argument("--seq-len", type=flags.Number(int, 4), default=128,
                   help="max tokens per example (eos appended, padding masked)")
    g.add_argument("--tokenizer", default="auto", help="auto (the model's own; bpe for tiny-gpt2) | bpe | a "
                   "folder with vocab.json + merges.txt | a hub name")
    g.add_argument("--bpe-vocab-size", type=flags.POSITIVE_INT, default=4096,
                   help="vocabulary of the offline BPE (--tokenizer bpe)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="distilgpt2", help="distilgpt2 | gpt2 | tinyllama | qwen-0.5b | hub name | "
                   "local folder | tiny-gpt2 (random 2-layer GPT-2, from scratch)")
    g.add_argument("--lora-r", type=flags.COUNT, default=8, help="LoRA rank (0: train every parameter)")
    g.add_argument("--lora-targets", nargs="+", default=None, help="names of the linear layers that get adapters "
                   "(default: the architecture's attention and MLP projections, for "
                   f"{', '.join(options.LORA_ARCHITECTURES)})")
    g.add_argument("--lora-alpha", type=flags.POSITIVE, default=16.0, help="LoRA scaling numerator (scale alpha/r)")
    g.add_argument("--lora-dropout", type=flags.Number(float, 0, 1, high_open=True), default=0.05,
                   help="dropout on the LoRA input")
    g = p.add_argument_group("partition")
    g.add_argument("--partition", default="iid", help="iid | topic_skew | style_skew | token_skew")
    g.add_argument("--alpha", type=flags.POSITIVE, default=0.5,
                   help="Dirichlet concentration for topic_skew (lower = more skew)")
    g.add_argument("--topic-split", default="mix", help="topic_skew kind: mix (equal client sizes, each client's "
                   "topic mix ~ Dir(alpha); valid for every seed) | labels (each topic split over clients ~ "
                   "Dir(alpha), redrawn until every client has --min-size; Flower's DirichletPartitioner)")
    g.add_argument("--min-size", type=flags.COUNT, default=2,
                   help="minimum examples per client for --topic-split labels")
    g.add_argument("--style-criterion", default="length", help="style_skew score: length | formality | complexity")
    g.add_argument("--token-skew", default="frequency", help="token_skew kind: frequency | truncation | vocabulary")
    g = algorithm_flags.add_algorithm_args(p, momentum_form="heavy-ball", client_opt_state="reset", also={
        name: f"the source's name for fedavg with --server-opt {name}" for name in options.SOURCE_ALGORITHMS})
    algorithm_flags.add_fisher_stat_args(g, local=False)
    g.add_argument("--cluster-features", default="tokens", help="data clustering statistic: tokens (unigram "
                   "distribution of the client's training tokens) | topics (its topic histogram)")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=flags.POSITIVE_INT, default=1, help="passes over the client's data per round")
    g.add_argument("--max-local-steps", type=flags.COUNT, default=0, help="cap on local steps per round (0: no cap)")
    g.add_argument("--local-steps", type=flags.COUNT, default=0, help="exactly this many local steps per client "
                   "per round (cycling over the client's data as needed; overrides --local-epochs and "
                   "--max-local-steps), so clients of every size and every split do the same work (0: epochs)")
    g.add_argument("--batch-size", type=flags.POSITIVE_INT, default=8, help="local batch size (examples)")
    g.add_argument("--learning-rate", type=flags.POSITIVE, default=5e-5, help="local learning rate")
    g.add_argument("--lr-schedule", default="constant", help="constant | cosine (the rate of round r: cosine from "
                   "--learning-rate at the first round to 0 after the last, the same for every client of the round)")
    g.add_argument("--local-optimizer", default="adamw", help="adamw | sgd (SCAFFOLD with adamw: its correction "
                   "lr (c - c_i) is subtracted from the parameters after each step, not fed to AdamW)")
    g.add_argument("--weight-decay", type=flags.Number(float, 0), default=0.0, help="local weight decay")
    g.add_argument("--max-grad-norm", type=flags.Number(float, 0), default=0.0,
                   help="clip local gradients to this norm (0: off)")
    g = p.add_argument_group("federation")
    g.add_argument("--num-rounds", "--rounds", type=flags.POSITIVE_INT, default=50, help="communication rounds")
    g.add_argument("--num-clients", type=flags.POSITIVE_INT, default=10, help="number of clients K")
    g.add_argument("--participation-rate", type=flags.FRACTION, default=1.0,
                   help="fraction of clients per round, in (0, 1]")
    flags.add_clients_per_round(g)
    g.add_argument("--eval-every", type=flags.POSITIVE_INT, default=1, help="evaluate the global model every N rounds")
    g.add_argument("--client-holdout", type=flags.Number(float, 0, 1, high_open=True), default=None,
                   help="fraction of every client's examples held out for its personalised perplexity (scored by "
                        "its own cluster's model) and --aggregator entropy's entropy (default 0.1 with it, else 0: "
                        "none)")
    cli.add_run_args(p, out_dir="runs/llm_noniid")
    return p


def check_args(args) -> None:
    """The checks of its arguments alone (``federated.validate``; common.jobs: a grid checks its runs)."""
    from llm_noniid import federated

    federated.validate(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    from common import distributed as dist  # torch and the run's modules load once the arguments are parsed
    from llm_noniid import federated

    federated.validate(args)
    with dist.process_group() as (rank, world):  # (0, 1) without torchrun
        return federated.run(args, rank, world)


if __name__ == "__main__":
    cli.run(main)
