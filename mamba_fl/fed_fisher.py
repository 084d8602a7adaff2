"""FedFisher: parameters averaged coordinate-wise with weights from each client's diagonal Fisher.

    python mamba_fl/fed_fisher.py --layers 2 --quick
    python mamba_fl/fed_fisher.py --layers 4 --fisher-samples 64 --fisher-labels sampled

After local training, client k computes F_k, the diagonal Fisher at its final parameters from per-sequence
gradients of --fisher-samples of its training blocks, for every parameter (the tied embedding too, which the source
lost to a plain mean; ``mamba_fl.client_stats``), and the server sets
theta <- (sum_k n_k F_k theta_k + eps theta_bar) / (sum_k n_k F_k + eps), theta_bar the FedAvg mean and eps
--fisher-eps times the mean of sum_k n_k F_k (``common.aggregators.Fisher``): FedAvg where the clients carry no
Fisher information, never a pull toward zero. Evaluation rows log ``fisher_eps_share`` (the fraction of
coordinates where eps decides). Clients send their Fisher too (2x upload). ``--fisher-method local`` estimates it
from the client's own local steps (``common.fisher.LocalStepFisher``). With ``--algorithm scaffold`` the server
moves x <- x + server_lr (Fisher aggregate - x) and updates SCAFFOLD's control variate. fed_avg.py
``--aggregator fisher`` is the same run.
"""
from __future__ import annotations

from common import cli
from mamba_fl import options

SCRIPT = options.Script(name="fedfisher", script="fed_fisher", aggregator="fisher")


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    return options.federated_parser("FedFisher", __doc__, add_help, aggregator="fisher")


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
