"""FedMomentum (FedAvgM): server momentum on the pseudo-gradient of FedAvg.

    python mamba_fl/fed_momentum.py --layers 2 --quick
    python mamba_fl/fed_momentum.py --layers 1 --server_momentum 0.9 --server_lr 1.0 --momentum-form heavy-ball

Each round the clients train as in FedAvg; with d = theta - mean_k theta_k (the pseudo-gradient) the server
keeps a momentum buffer m and steps theta <- theta - server_lr * m, where
  ema (the source's default):        m <- beta m + (1 - beta) d
  heavy-ball (Hsu et al. 2019, Flower): m <- beta m + d
(see common.server_opt.make_server_optimizer). The round loop lives in mamba_fl/federated.py.
"""
from __future__ import annotations

from common import cli
from mamba_fl import federated

METHOD = federated.Method(name="fedmomentum", script="fed_momentum", server="fedavgm",
                          run_name_extra=lambda a: {"m": a.server_momentum, a.momentum_form: True})


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    # fed_avg.py with --server-opt fedavgm as the default (--server-momentum, --server-lr, --momentum-form)
    return federated.get_args_parser("FedMomentum", add_help, server_opt="fedavgm")


def main(argv=None) -> dict:
    return federated.run(cli.parse(get_args_parser(), argv), METHOD)


if __name__ == "__main__":
    cli.run(main)
