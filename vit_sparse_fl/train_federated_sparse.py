"""Federated sparse fine-tuning: FedAvg where every client updates only a fixed, Fisher-chosen mask.

    python vit_sparse_fl/train_federated_sparse.py --quick
    python vit_sparse_fl/train_federated_sparse.py --quick --compare-strategies
    python vit_sparse_fl/train_federated_sparse.py --data cifar100 --data-dir data --weights dino \\
        --sparsity-ratio 0.9 --mask-strategy least_sensitive --calibration-rounds 5 --rounds 300

Before round 1 the server builds one global mask over the backbone from every client's scores on its own data
(``sparse.compute_masks``; vit_sparse_fl/README.md, "Sensitivity scores"); the head is never masked. Then
train_federated's rounds run with SparseSGDM: masked coordinates stay bit-for-bit unchanged.
"""
from __future__ import annotations

from common import cli, flags
from vit_sparse_fl import options, train_federated


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    # its --fisher-labels: the masks' (sampled) and FedFisher's
    parser = train_federated.get_args_parser(add_help=add_help)
    parser.description, parser.epilog = __doc__.split("\n\n")[0], cli.examples(__doc__)
    g = parser.add_argument_group("sparse fine-tuning")
    g.add_argument("--sparsity-ratio", type=options.UNIT, default=0.9,
                   help="share s of backbone coordinates frozen (density 1 - s)")
    g.add_argument("--mask-strategy", default="least_sensitive", choices=list(options.MASK_STRATEGIES),
                   help="which coordinates train: Fisher-ranked (least/most sensitive), by |weight|, or random")
    g.add_argument("--calibration-rounds", type=flags.POSITIVE_INT, default=5,
                   help="R: mask calibration rounds with keep share k_r = (1-s)^((r+1)/R)")
    parser.presets["quick"]["calibration_rounds"] = 3
    g.add_argument("--calibration-batches", type=flags.POSITIVE_INT, default=1,
                   help="Fisher batches per client and calibration round")
    g.add_argument("--fisher-score", default="fisher", choices=["fisher", "talos"],
                   help="fisher: mean squared per-example gradient of -log softmax at sampled (or true) labels, "
                        "exact-count threshold; talos: the official TaLoS score (vit_sparse_fl/talos.py): squared "
                        "gradient of the sampled logit, not-kept weights x 0.1, kthvalue threshold keeping ties")
    g.add_argument("--mask-embeddings", action="store_true",
                   help="let the masks reach a text encoder's embedding tables; by default they stay frozen, as in "
                        "TaLoS's NLP code (rows of tokens the calibration texts lack score 0: least-sensitive picks)")
    g.add_argument("--compare-strategies", action="store_true", help="one run per mask strategy")
    return parser


def check_args(args) -> None:
    """The checks of its arguments alone (common.jobs: a grid checks its runs)."""
    from vit_sparse_fl import federated_sparse

    federated_sparse.check_args(args)


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    from vit_sparse_fl import federated_sparse  # torch and the run's modules load once the arguments are parsed

    federated_sparse.check_args(args)
    return federated_sparse.run(args)


if __name__ == "__main__":
    cli.run(main)
