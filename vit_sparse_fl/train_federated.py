"""FedAvg of a DINO ViT-S/16 on CIFAR-100 with IID or pathological non-IID shards.

    python vit_sparse_fl/train_federated.py --quick
    python vit_sparse_fl/train_federated.py --data cifar100 --data-dir data --weights dino \\
        --num-clients 100 --participation-rate 0.1 --local-steps 4 --rounds 300 --sharding non_iid --nc 5
    python vit_sparse_fl/train_federated.py --quick --heterogeneity-experiment --nc-values 1 5 10 50
    python vit_sparse_fl/train_federated.py --quick --local-steps-experiment --j-values 4 8 16

FedAvg as vit_sparse_fl/README.md describes it. Every random draw is keyed by (seed, round, client), so --resume
reproduces the uninterrupted run exactly; under ``torchrun`` each rank trains its share of the clients.
"""
from __future__ import annotations

from common import algorithm_flags, cli, flags
from vit_sparse_fl import options

PLAIN_SGD_ARGS = ("--momentum", "0")  # plain SGD local steps (SCAFFOLD, FedNova; common.combinations asks with them)


def get_args_parser(add_help: bool = True) -> options.ArgumentParser:
    parser = options.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                    epilog=cli.examples(__doc__),
                                    quick=dict(rounds=8, eval_every=2, num_clients=20, participation_rate=0.2,
                                               fisher_samples=8))  # FedFisher's sample: read only by it
    cli.add_fed_args(parser, num_clients=100, rounds=300, participation_rate=0.1, eval_every=10)
    g = parser.add_argument_group("local training and sharding")
    g.add_argument("--local-steps", type=flags.POSITIVE_INT, default=4, help="J: local SGD steps per client per round")
    g.add_argument("--sharding", default="iid", choices=["iid", "non_iid"],
                   help="iid: random equal shards; non_iid: pathological, exactly --nc classes per client")
    flags.alias(g, "--partition", dest="sharding", of="--sharding", choices=["iid", "non_iid"])
    flags.add_clients_per_round(g)
    g.add_argument("--nc", type=flags.POSITIVE_INT, default=5,
                   help="classes per client for --sharding non_iid (lower = more skew)")
    g.add_argument("--heterogeneity-experiment", action="store_true", help="one non-IID run per --nc-values")
    g.add_argument("--nc-values", type=flags.POSITIVE_INT, nargs="+", default=[1, 5, 10, 50],
                   help="Nc values of the sweep")
    g.add_argument("--local-steps-experiment", action="store_true",
                   help="one run per --j-values, rounds scaled so that rounds x J stays constant")
    g.add_argument("--j-values", type=flags.POSITIVE_INT, nargs="+", default=[4, 8, 16], help="J values of the sweep")
    g.add_argument("--head-warmup", type=flags.COUNT, default=0,
                   help="federated rounds that train only the head before the main rounds (0: none), so the "
                        "sparse runs score a trained head")
    g.add_argument("--interference-window", type=flags.Number(float, 0.0, 1.0), default=0.0,
                   help="share of the final rounds whose evaluations also measure interference: a client's own-"
                        "class test accuracy, its local model minus the aggregate (0: off)")
    g.add_argument("--interference-images", type=flags.COUNT, default=400,
                   help="at most this many test images of each client's own classes score interference "
                        "(the first ones in test-set order; 0: all)")
    options.add_data_args(parser)
    options.add_model_args(parser, lr=0.01, weight_decay=1e-4)
    g = algorithm_flags.add_algorithm_args(parser, clustering="one global model is evaluated, swept and exported here")
    # one --fisher-labels for every Fisher of the subproject: FedFisher's here, the sparse masks' too (sampled: the
    # true Fisher, their documented default; true: the data's labels, the empirical Fisher)
    algorithm_flags.add_fisher_stat_args(g, labels="sampled", labels_help="; train_federated_sparse.py's masks read it "
                                     "too (--fisher-score fisher)", local=False)
    g.add_argument("--holdout-fraction", type=flags.Number(float, 0, 1, high_open=True), default=None,
                   help="fraction of each client's shard held out of training (--aggregator entropy measures on it; "
                        "default 0.1 with it, else 0)")
    cli.add_run_args(parser)
    return parser


def check_args(args) -> None:
    """The checks of its arguments alone (common.jobs: a grid checks its runs)."""
    from vit_sparse_fl import federated

    federated.finish_args(args)


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    from vit_sparse_fl import federated  # torch and the run's modules load once the arguments are parsed

    federated.finish_args(args)
    return federated.run(args)


if __name__ == "__main__":
    cli.run(main)
