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
    p = federated.get_args_parser("FedMomentum", add_help)
    g = p.add_argument_group("server momentum")
    g.add_argument("--server-momentum", type=float, default=0.9, help="momentum beta of the server buffer")
    g.add_argument("--server-lr", type=float, default=1.0, help="server step size on the momentum buffer")
    g.add_argument("--momentum-form", choices=("ema", "heavy-ball"), default="ema",
                   help="ema: m <- b m + (1-b) d (the source); heavy-ball: m <- b m + d (FedAvgM, Flower)")
    return p


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = cli.parse(parser, argv)
    cli.check(0.0 <= args.server_momentum < 1.0, f"--server-momentum must be in [0, 1), got {args.server_momentum}")
    cli.check(args.server_lr > 0, f"--server-lr must be positive, got {args.server_lr}")
    return federated.run(args, METHOD, federated.explicit_dests(parser, argv))


if __name__ == "__main__":
    cli.run(main)
