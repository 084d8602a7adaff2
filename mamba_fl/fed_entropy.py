"""FedEntropy: clients weighted by the confidence of their model on their own held-out data.

    python mamba_fl/fed_entropy.py --layers 2 --quick
    python mamba_fl/fed_entropy.py --layers 1 --temperature 1.0 --holdout-fraction 0.1

After local training, client k measures H_k, the mean predictive entropy (nats per token) of its model on its
held-out 10% (``mamba_fl.client_stats``), and the server sets theta <- sum_k alpha_k theta_k,
alpha_k = softmax(-H_k / T) over the clients of its cluster (``common.aggregators.Entropy``): lower T favours the
most confident clients, T -> infinity is the uniform mean. fed_avg.py ``--aggregator entropy`` is the same run.
"""
from __future__ import annotations

from common import cli
from mamba_fl import options

SCRIPT = options.Script(name="fedentropy", script="fed_entropy", aggregator="entropy")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    return options.federated_parser("FedEntropy", __doc__, add_help, aggregator="entropy")


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
