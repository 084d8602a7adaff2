"""FedMomentum (FedAvgM): server momentum on the pseudo-gradient of FedAvg.

    python mamba_fl/fed_momentum.py --layers 2 --quick
    python mamba_fl/fed_momentum.py --layers 1 --server_momentum 0.9 --server_lr 1.0 --momentum-form heavy-ball

The clients train as in FedAvg; with the pseudo-gradient d = theta - mean_k theta_k the server steps
theta <- theta - server_lr * m, m <- beta m + (1 - beta) d (ema, the source's default) or m <- beta m + d
(heavy-ball, Hsu et al. 2019, Flower; ``common.server_opt.make_server_optimizer``). fed_avg.py with
``--server-opt fedavgm`` is the same run under another name.
"""
from __future__ import annotations

from common import cli
from mamba_fl import options

SCRIPT = options.Script(name="fedmomentum", script="fed_momentum", server="fedavgm",
                         tags=lambda a: {"m": a.server_momentum, a.momentum_form: True})


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    return options.federated_parser("FedMomentum", __doc__, add_help, server_opt="fedavgm")


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
