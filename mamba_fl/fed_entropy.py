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
from mamba_fl import federated

SCRIPT = federated.Script(name="fedentropy", script="fed_entropy", aggregator="entropy")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    return federated.get_args_parser("FedEntropy", add_help, aggregator="entropy")


check_args = federated.finish_args  # the checks of its arguments alone (common.jobs: a grid checks its runs)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    check_args(args)
    return federated.run(args, SCRIPT)


if __name__ == "__main__":
    cli.run(main)
