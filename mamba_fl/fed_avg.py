"""FedAvg of a Mamba2 language model trained from scratch.

    python mamba_fl/fed_avg.py --layers 2 --quick
    python mamba_fl/fed_avg.py --quick --shard topic --algorithm fedprox --mu 0.01
    python mamba_fl/fed_avg.py --model-config pure_ssm_4_layer --num_clients 4 --local_updates 8 --data wikitext2

Every round each client starts from the global model, runs --local-updates AdamW steps on its shard, and
the server sets theta <- sum_k n_k theta_k / sum_k n_k (n_k: the client's training blocks; mamba_fl/federated.py).
``--aggregator fisher`` / ``entropy`` are fed_fisher.py's and fed_entropy.py's aggregates.
"""
from __future__ import annotations

from common import cli
from mamba_fl import options

SCRIPT = options.Script(name="fedavg", script="fed_avg")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    return options.federated_parser("FedAvg", __doc__, add_help)


def check_args(args) -> None:
    """The checks of its arguments alone (common.jobs: a grid checks its runs)."""
    from mamba_fl import federated

    federated.finish_args(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    from mamba_fl import federated  # torch and the run's modules load once the arguments are parsed

    federated.finish_args(args)
    return federated.run(args, SCRIPT)


if __name__ == "__main__":
    cli.run(main)
