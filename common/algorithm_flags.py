"""The shared federated-algorithm flags of every federated script (``add_algorithm_args``): --algorithm,
--aggregator, --server-opt, each algorithm's and aggregator's own flags, clustering, the FedFisher statistic's
flags (``add_fisher_stat_args``) and the --dp-* flags (``add_dp_args``). Torch-free, so a script builds its parser
and answers --help before torch loads; ``common.engine`` checks the parsed values (``check_algorithm_args``).

The names and one-line descriptions here are the registries' (``common.algorithms.REGISTRY``,
``common.aggregators.REGISTRY``): a class registered there is listed here too, its own flags with it, and
tests/common/test_algorithm_flags.py holds the two lists (and each class's ``flags``) equal.
"""
from __future__ import annotations

from common import flags

# --algorithm: the client algorithms (common.algorithms, feddyn, fednova)
ALGORITHMS = {
    "fedavg": "plain local training",
    "fedprox": "loss + mu/2 ||w - w_global||^2",
    "scaffold": "control variates; plain SGD local steps",
    "feddyn": "dynamic regularization (Acar et al. 2021)",
    "fednova": "normalized averaging (Wang et al. 2020); plain SGD local steps",
}
# --aggregator: the server's aggregate of a round's client models (common.aggregators, robust)
AGGREGATORS = {
    "mean": "the weighted mean (FedAvg)",
    "fisher": "Fisher-weighted coordinates (FedFisher)",
    "entropy": "softmax(-H_k / T) of the clients' held-out entropies (FedEntropy)",
    "median": "coordinate-wise median (FedMedian)",
    "trimmed_mean": "coordinate-wise trimmed mean (FedTrimmedAvg)",
    "krum": "the client closest to its neighbours (Krum)",
    "multikrum": "mean of the m clients of lowest Krum score",
}
SERVER_OPTS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")  # common.server_opt
# --server-lr's default (FedAdam diverges at 1; FedYogi / FedAdagrad: Flower's defaults)
SERVER_LR = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2, "fedadagrad": 1e-1}
CLUSTERINGS = ("none", "data", "ifca")  # common.clustering.METHODS
FISHER_EPS = 1e-6     # --fisher-eps (common.aggregators.Fisher.EPS)
FEDDYN_ALPHA = 0.01   # --feddyn-alpha: the paper's grid is {0.1, 0.01, 0.001}; FL-bench's default
FISHER_STAT_FLAGS = ("fisher_samples", "fisher_batch", "fisher_labels", "fisher_method")
DP_SAMPLINGS = ("poisson", "fixed")  # common.dp.SAMPLINGS
DP_ACCOUNTANTS = ("rdp", "pld")      # common.dp.ACCOUNTANTS
CLIENT_BATCHING = ("off", "stacked")  # --client-batching (common.batched)
DP_CLIP_LR = 0.2  # Andrew et al. 2021's eta_C for the geometric clip update


def _listing(table: dict[str, str]) -> str:
    return " | ".join(f"{name} ({what})" for name, what in table.items())


def add_algorithm_args(parser, *, server_opt: str = "fedavg", momentum_form: str = "heavy-ball",
                       client_opt_state: str | None = "reset", clustering: str | None = None,
                       scaffold: str | None = None, also: dict[str, str] | None = None, aggregator: str = "mean"):
    """The shared flags (--algorithm ... --ifca-batches, the algorithms' and aggregators' own flags, the
    --dp-* flags in a group of their own); returns the group, for a script's own additions.
    ``clustering`` / ``scaffold``: why this script cannot honour them (said in --help, refused by
    ``check_algorithm_args``); ``client_opt_state`` None: no state; ``aggregator``: the script's default;
    ``also``: further --algorithm values the script resolves itself (name: what it means)."""
    g = parser.add_argument_group("federated algorithm (common.engine)")
    g.add_argument("--algorithm", default="fedavg", choices=(*ALGORITHMS, *(also or {})),
                   help="client algorithm: " + _listing({**ALGORITHMS, **(also or {})})
                   + (f"; scaffold is refused here: {scaffold}" if scaffold else ""))
    g.add_argument("--mu", type=flags.Number(float, 0), default=0.01,
                   help="FedProx proximal weight (--algorithm fedprox)")
    g.add_argument("--scaffold-weighting", default="uniform", help="SCAFFOLD's means of dy and dc: uniform "
                   "(the paper's Algorithm 1) | size (both weighted by client size, c = sum_i p_i c_i)")
    g.add_argument("--feddyn-alpha", type=flags.POSITIVE, default=FEDDYN_ALPHA,
                   help="FedDyn's regularizer weight alpha (--algorithm feddyn; the paper tries 0.1, 0.01, 0.001: "
                        "larger pulls clients harder toward the global model)")
    g.add_argument("--aggregator", default=aggregator, choices=tuple(AGGREGATORS),
                   help="the server's aggregate of the round's client models: " + _listing(AGGREGATORS))
    g.add_argument("--fisher-eps", type=flags.POSITIVE, default=FISHER_EPS,
                   help="FedFisher's floor relative to the mean Fisher: coordinates whose summed Fisher is below this "
                        "fraction of the mean get (mostly) the FedAvg mean; raise toward FedAvg")
    g.add_argument("--temperature", type=flags.POSITIVE, default=1.0,
                   help="FedEntropy's softmax temperature T of alpha_k = softmax(-H_k / T); lower favours confident "
                        "clients")
    g.add_argument("--trim-fraction", type=flags.Number(float, 0, 0.5, high_open=True), default=0.2,
                   help="--aggregator trimmed_mean: share of clients dropped at EACH end of every coordinate")
    g.add_argument("--krum-byzantine", type=flags.COUNT, default=0,
                   help="--aggregator krum / multikrum: f, the Byzantine clients tolerated")
    g.add_argument("--multikrum-keep", type=flags.COUNT, default=0,
                   help="--aggregator multikrum: clients averaged (0: n - f)")
    g.add_argument("--server-opt", default=server_opt, choices=SERVER_OPTS,
                   help="server step on the aggregate: fedavg (theta <- theta + server_lr (avg - theta)) | "
                        "fedavgm (server momentum) | fedadam | fedyogi | fedadagrad (Reddi et al. 2021)")
    g.add_argument("--server-lr", type=flags.POSITIVE, default=None,
                   help="server step size: FedAvg / FedAvgM (1 = plain), SCAFFOLD's eta_g (default: 1; "
                        f"fedadam {SERVER_LR['fedadam']:g})")
    g.add_argument("--server-momentum", type=flags.Number(float, 0, 1, high_open=True), default=0.9,
                   help="FedAvgM momentum beta / FedAdam, FedYogi, FedAdagrad beta1")
    g.add_argument("--server-beta2", type=flags.Number(float, 0, 1, high_open=True), default=0.99,
                   help="FedAdam / FedYogi beta2 (second-moment decay)")
    g.add_argument("--server-tau", type=flags.POSITIVE, default=None,
                   help="FedAdam / FedYogi / FedAdagrad adaptivity tau (default 1e-3; fedadagrad 1e-9)")
    g.add_argument("--momentum-form", choices=("ema", "heavy-ball"), default=momentum_form,
                   help="FedAvgM: ema: m <- b m + (1-b) d (the mamba source) | heavy-ball: m <- b m + d (Flower)")
    if client_opt_state is None:
        g.add_argument("--client-opt-state", choices=("reset",), default="reset",
                       type=flags.OnlyHere(("reset",), ("reset", "persist"), "the clients' local optimizer keeps no "
                                           "state between rounds in this script"),
                       help="the clients' local optimizer keeps no state between rounds here (reset only)")
    else:
        g.add_argument("--client-opt-state", choices=("reset", "persist"), default=client_opt_state,
                       help="persist: each client keeps its optimizer state (moments, momentum) across rounds "
                            "(memory: the state per client); reset: a fresh optimizer per client per round")
    g.add_argument("--clustering", default="none", choices=CLUSTERINGS if clustering is None else ("none",),
                   type=str if clustering is None else flags.OnlyHere(("none",), CLUSTERINGS, clustering),
                   help="none | ifca (C cluster models; every round each client trains the one with the lowest "
                        "loss on its own data) | data (clients grouped once by their data distribution)"
                        + (f"; only none here: {clustering}" if clustering else ""))
    g.add_argument("--num-clusters", type=flags.COUNT, default=0,
                   help="clusters (ifca: >= 2; data: 0 = chosen by silhouette)")
    g.add_argument("--ifca-init-rounds", type=flags.POSITIVE_INT, default=5,
                   help="IFCA: each starting model is this many rounds' worth of local steps of its seed "
                        "client from the initial model")
    g.add_argument("--ifca-batches", type=flags.POSITIVE_INT, default=2,
                   help="IFCA: batches of a client's own training data on which it scores every cluster model")
    add_dp_args(parser)
    return g


def add_client_batching_arg(group) -> None:
    """--client-batching (``common.batched`` runs it), in a script's own group: a script adds it where its task has
    the hooks (``Task.client_batches``, ``Task.stacked_losses``)."""
    group.add_argument("--client-batching", default="off", choices=CLIENT_BATCHING,
                       help="off: the round's clients train one after another | stacked: together, their models "
                            "stacked, one forward/backward per local step for all (FedAvg / FedProx with plain SGD; "
                            "the same run up to float summation order; it pays where a step's kernels are small)")


def add_fisher_stat_args(group, *, labels: str = "empirical", labels_help: str = "", local: bool = True) -> None:
    """How a task estimates the per-client Fisher ``--aggregator fisher`` asks for (``common.fisher.client_fisher``):
    flags of the scripts whose task computes it (its ``supported_stats`` holds "fisher"), refused there without
    ``--aggregator fisher``. ``labels``: --fisher-labels' default (a script whose masks read the flag too keeps its
    own, with ``labels_help``; "true" is the data's labels' older name); ``local``: the task's local steps feed
    ``common.fisher.LocalStepFisher`` (--fisher-method local)."""
    group.add_argument("--fisher-samples", type=flags.POSITIVE_INT, default=32,
                       help="FedFisher: training examples per client for its Fisher (per-example gradients); more is "
                            "smoother")
    group.add_argument("--fisher-batch", type=flags.POSITIVE_INT, default=8,
                       help="FedFisher: examples per vectorised gradient chunk")
    group.add_argument("--fisher-labels", choices=("empirical", "sampled", "true"), default=labels,
                       help="labels of the Fisher diagonals: empirical (or true): targets from the data; sampled: "
                            f"y ~ model (true Fisher); default {labels}" + labels_help)
    methods = ("per_example", "loop", "batch", *(("local",) if local else ()))
    group.add_argument("--fisher-method", choices=methods, default="per_example",
                       help="FedFisher: per_example: torch.func vmap over --fisher-samples examples; loop: reference; "
                            "batch: squared batch gradients of those examples (biased)" + (
                                "; local: from the batch gradients of the client's own consecutive local steps, "
                                "reused from training (no extra pass; needs 2+ local steps; empirical labels)"
                                if local else ""))


def add_dp_args(parser) -> None:
    """The shared DP flags (``common.privacy`` checks and runs them), in a group of their own."""
    g = parser.add_argument_group("differential privacy (common.privacy, user-level DP-FedAvg)")
    g.add_argument("--dp-clip", type=flags.POSITIVE, default=None,
                   help="turns DP on: each client's update clipped to this L2 norm C (the initial C with "
                        "--dp-quantile); lower clips more updates and adds less noise (z C)")
    g.add_argument("--dp-noise", type=flags.Number(float, 0), default=None,
                   help="noise multiplier z: Gaussian noise of std z C on the clipped sum (0: clipping alone, "
                        "epsilon infinite); or give --dp-epsilon")
    g.add_argument("--dp-epsilon", type=flags.POSITIVE, default=None,
                   help="target epsilon at the run's end: z is solved for the run's rounds (dp.noise_for_epsilon)")
    g.add_argument("--dp-delta", type=flags.Number(float, 0, 1, low_open=True, high_open=True), default=None,
                   help="delta of the reported epsilon (default 1 / N^1.1, N the number of clients)")
    g.add_argument("--dp-sampling", choices=DP_SAMPLINGS, default="poisson",
                   help="poisson: each client takes part independently with probability q = --participation-rate "
                        "(cohorts vary, may be empty; add/remove-one privacy) | fixed: the script's fixed-size "
                        "cohorts, accounted as sampling without replacement (replace-one privacy; RDP only)")
    g.add_argument("--dp-quantile", type=flags.Number(float, 0, 1, low_open=True, high_open=True), default=None,
                   help="adaptive clipping (Andrew et al. 2021): C tracks this quantile of the update norms "
                        "(0.5: the median); off by default")
    g.add_argument("--dp-clip-lr", type=flags.POSITIVE, default=DP_CLIP_LR,
                   help="adaptive clipping: geometric step eta_C of C <- C exp(-eta_C (b - quantile))")
    g.add_argument("--dp-count-noise", type=flags.POSITIVE, default=None,
                   help="adaptive clipping: std sigma_b of the noised count of unclipped updates (default expected "
                        "cohort / 20; must exceed z / 2: it takes a share of the budget z)")
    g.add_argument("--dp-accountant", choices=DP_ACCOUNTANTS, default="rdp",
                   help="dp-accounting's RDP or PLD accountant (PLD: tighter, Poisson sampling only)")
