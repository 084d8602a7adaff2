"""User-level DP-FedAvg in the round engine (``common.dp`` holds the mechanism and the accountant): the shared
``--dp-*`` flags, their one-line refusals, and ``PrivateRounds``, what a private run adds to ``common.engine``.

With ``--dp-clip C`` a run's rounds are: the cohort sampled as the accountant assumes (``--dp-sampling poisson``:
every client independently with probability q = --participation-rate, from ``dp.sample_cohort``; ``fixed``: the
task's own fixed-size cohorts, accounted as sampling without replacement) -> every cluster's aggregator is
``dp.DPMean`` (each client's update clipped to L2 <= C, the sum noised with std z C, divided by the expected
cohort q N), reset and asked for its result EVERY round, an empty cohort included (skipping a round would tell
who took part) -> the server optimizer steps on the noised mean (post-processing) -> the accountant steps once.
Every evaluation row and summary.json get epsilon at delta (``dp_epsilon``, ``dp_delta``, ``dp_noise``,
``dp_clip``). What is private: user-level, one client's whole data; add-or-remove-one under Poisson sampling,
replace-one under fixed cohorts. The rows' per-client ``dp_norm`` / ``dp_clipped`` and cohort sizes are the
researcher's diagnostics, not part of the release.
"""
from __future__ import annotations

import argparse

from common import dp, flags
from common.errors import check


def enabled(args) -> bool:
    return getattr(args, "dp_clip", None) is not None


def check_dp_args(args, refused: str | None = None) -> None:
    """One-line refusals before anything runs: DP flags without --dp-clip, a combination ``dp.refusal`` names,
    ``refused`` (why this script cannot run DP), noise given twice or not at all."""
    on = enabled(args)
    flags.refuse_unused(args, [
        *((dest, on, "without --dp-clip (which turns DP on)") for dest in
          ("dp_noise", "dp_epsilon", "dp_delta", "dp_sampling", "dp_quantile", "dp_accountant")),
        *((dest, on and args.dp_quantile is not None, "without --dp-quantile (adaptive clipping)")
          for dest in ("dp_clip_lr", "dp_count_noise"))])
    if not on:
        return
    check(refused is None, f"--dp-clip is refused here: {refused}")
    why = dp.refusal(args.algorithm, args.aggregator, args.clustering, args.server_opt)
    check(why is None, why)
    check((args.dp_noise is None) != (args.dp_epsilon is None),
          "--dp-clip needs exactly one of --dp-noise z (0: clipping alone) and --dp-epsilon (z solved for the run)")
    if args.dp_sampling == "fixed":
        check(args.dp_accountant == "rdp", "--dp-sampling fixed is accounted with RDP only (dp-accounting's PLD has "
                                           "no sampling-without-replacement event); use --dp-accountant rdp")
    n = getattr(args, "num_clients", None)
    if args.dp_quantile is not None and args.dp_noise is not None and n is not None:
        dp.update_noise_multiplier(args.dp_noise, count_noise(args, n))  # refuses a count noise <= z / 2


def count_noise(args, num_clients: int) -> float:
    """--dp-count-noise, default the expected cohort / 20 (Andrew et al. 2021)."""
    if args.dp_count_noise is not None:
        return float(args.dp_count_noise)
    return dp.expected_cohort(args.participation_rate, num_clients) / 20


def default_delta(num_clients: int) -> float:
    return 1.0 / num_clients ** 1.1


class PrivateRounds:
    """A private run's sampling, accountant and log fields; ``Federation.dp`` (None without --dp-clip).

    ``num_clients`` N, ``per_round`` the task's fixed cohort size m, ``rounds`` the run's length (for
    --dp-epsilon's noise multiplier). Poisson: q = --participation-rate (``--clients-per-round m``: m / N);
    fixed: q = m / N."""

    def __init__(self, args, num_clients: int, per_round: int, rounds: int, seed: int):
        self.args, self.N, self.seed, self.sampling = args, int(num_clients), int(seed), args.dp_sampling
        self.q = (float(getattr(args, "participation_rate", per_round / num_clients)) if self.sampling == "poisson"
                  else per_round / num_clients)
        self.delta = args.dp_delta if args.dp_delta is not None else default_delta(self.N)
        n = self.N if self.sampling == "fixed" else None
        self.z = (float(args.dp_noise) if args.dp_noise is not None else
                  dp.noise_for_epsilon(args.dp_epsilon, self.delta, self.q, rounds, self.sampling, n,
                                       args.dp_accountant))
        self.cohort = dp.expected_cohort(self.q, self.N)
        self.accountant = dp.Accountant(self.q, self.z, self.delta, self.sampling, n, args.dp_accountant)
        adaptive = args.dp_quantile is not None
        # what DPMean reads (the solved z, the fixed denominator), apart from the run's own arguments
        self.mean_args = argparse.Namespace(
            seed=self.seed, dp_clip=args.dp_clip, dp_noise=self.z, dp_cohort=self.cohort,
            dp_quantile=args.dp_quantile, dp_clip_lr=args.dp_clip_lr,
            dp_count_noise=count_noise(args, self.N) if adaptive else None)

    def sample(self, task, r: int) -> list[int]:
        """Round r's cohort: Poisson from the stream (seed, "dp-sampling", r), through ``task.admit``; fixed: the
        task's own ``sample`` (m distinct clients)."""
        if self.sampling == "fixed":
            return task.sample(r)
        return task.admit(r, dp.sample_cohort(self.seed, r, self.N, self.q))

    def aggregators(self, models) -> list[dp.DPMean]:
        self.aggs = [dp.DPMean(x, self.mean_args, cluster=g) for g, x in enumerate(models)]
        return self.aggs

    def fields(self, clip: float | None = None) -> dict:
        """epsilon at delta after the rounds so far, the noise multiplier and the clip (``clip``: this round's)."""
        return {"dp_epsilon": self.accountant.epsilon(), "dp_delta": self.delta, "dp_noise": self.z,
                "dp_clip": float(self.args.dp_clip if clip is None else clip), "dp_rounds": self.accountant.rounds}

    def row(self, rnd: dict, aggs) -> dict:
        """An evaluation row's DP fields: ``fields`` and the round's clients' pre-clip norms and whether clipped."""
        clip = aggs[0].round_metrics().get("dp_clip")
        rows = rnd["rows"]
        return self.fields(clip) | {"dp_norm": {str(k): v["dp_norm"] for k, v in rows.items()},
                                    "dp_clipped": {str(k): v["dp_clipped"] for k, v in rows.items()}}

    def summary(self) -> dict:
        """summary.json's DP fields (written with every summary, ``RunDir.summary_sources``)."""
        out = self.fields() | {"dp_sampling": self.sampling, "dp_rate": self.q,
                               "dp_accountant": self.accountant.accountant, "dp_expected_cohort": self.cohort}
        if self.args.dp_quantile is not None:  # adaptive clipping: the clip the next round would use
            out["dp_final_clip"] = self.aggs[0].clip
        return out

    def state_dict(self) -> dict:
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.accountant.load_state_dict(state)
