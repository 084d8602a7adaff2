"""User-level differential privacy for federated rounds: DP-FedAvg's clipped, noised mean (McMahan et al. 2018,
"Learning differentially private recurrent language models"), adaptive clipping (Andrew et al. 2021,
"Differentially Private Learning with Adaptive Clipping"), client sampling that matches the accountant, and the
accountant itself: Google's ``dp-accounting`` (``pip install 'fedlab[dp]'``), never a hand-written bound.

One round releases ``x + (sum_k clip_C(theta_k - x) + N(0, (z C)^2 I)) / m`` where the sum runs over the round's
sampled clients, each counted ONCE whatever its data size (user-level DP: a user is the unit protected), and the
denominator ``m`` is FIXED (the expected cohort), so it reveals nothing about who took part. Two samplings, each
with the accountant event that describes it:

- ``poisson``: every client takes part independently with probability q (cohorts vary in size, may be empty);
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add-or-remove-one-user, m = q N.
- ``fixed``: m = q N clients drawn uniformly without replacement; ``SampledWithoutReplacementDpEvent(N, m, .)``
  under replace-one-user (the only relation the library analyses it under). Replacing a user moves the clipped sum
  by up to 2C, so the event's noise multiplier is z / 2 (noise over sensitivity). RDP only: dp-accounting's PLD
  accountant has no sampling-without-replacement event.

A run composes one such event per round a client could have been sampled in (``Accountant.step``): never per
local epoch or step, which are inside one client's computation. What ``DPMean`` releases after the noise (the
server optimizer's step: FedAvgM, FedAdam, FedYogi) is post-processing and costs no privacy.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from common import params as P
from common import seed as seeding
from common.errors import UsageError, check

SAMPLINGS = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")


# ----------------------------------------------------------------------------- the accountant (dp-accounting)
def _library():
    try:
        import dp_accounting
    except ImportError as e:
        raise UsageError("differential privacy needs Google's dp-accounting for its accountant; install it with "
                         "pip install 'fedlab[dp]' (or pip install dp-accounting)") from e
    return dp_accounting


def _check_mechanism(q: float, z: float, sampling: str, N: int | None, accountant: str) -> int | None:
    """The cohort size m of fixed sampling (None for Poisson), after one-line checks of the arguments."""
    check(sampling in SAMPLINGS, f"DP sampling {sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    check(accountant in ACCOUNTANTS, f"DP accountant {accountant!r}: expected one of {', '.join(ACCOUNTANTS)}")
    check(0 < q <= 1, f"DP sampling rate {q}: expected 0 < q <= 1")
    check(z >= 0 and math.isfinite(z), f"DP noise multiplier {z}: expected a finite z >= 0")
    if sampling == "poisson":
        return None
    check(accountant == "rdp", "fixed-size cohorts (sampling without replacement) are accounted with RDP only: "
                               "dp-accounting's PLD has no such event; use --dp-accountant rdp or Poisson sampling")
    check(N is not None and N >= 1, "fixed-size cohorts need the number of clients N for the accountant")
    m = round(q * N)
    check(1 <= m <= N and abs(q * N - m) < 1e-9 * N, f"fixed-size cohorts: q N = {q} x {N} is not a whole number "
                                                     "of clients; expected q = m / N")
    return m


def dp_event(q: float, z: float, rounds: int, sampling: str = "poisson", N: int | None = None,
             accountant: str = "rdp"):
    """The dp-accounting event of ``rounds`` rounds of the mechanism (see the module docstring)."""
    dpa = _library()
    m = _check_mechanism(q, z, sampling, N, accountant)
    if sampling == "poisson":
        one = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    else:  # replace-one: the clipped sum's sensitivity is 2C, so the noise is z / 2 sensitivities
        one = dpa.SampledWithoutReplacementDpEvent(N, m, dpa.GaussianDpEvent(z / 2))
    return dpa.SelfComposedDpEvent(one, int(rounds))


def _fresh_accountant(sampling: str, accountant: str):
    dpa = _library()
    relation = (dpa.NeighboringRelation.ADD_OR_REMOVE_ONE if sampling == "poisson"
                else dpa.NeighboringRelation.REPLACE_ONE)
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant(neighboring_relation=relation)
    return dpa.pld.PLDAccountant(neighboring_relation=relation)


@functools.lru_cache(maxsize=1024)  # an evaluation every few rounds asks again; fixed-size RDP takes ~0.5 s
def epsilon(q: float, z: float, rounds: int, delta: float, sampling: str = "poisson", N: int | None = None,
            accountant: str = "rdp") -> float:
    """epsilon at ``delta`` after ``rounds`` rounds at sampling rate q and noise multiplier z (inf for z = 0, 0
    for no round), from dp-accounting's RDP or PLD accountant."""
    check(0 < delta < 1, f"DP delta {delta}: expected 0 < delta < 1")
    check(rounds >= 0, f"DP rounds {rounds}: expected >= 0")
    _check_mechanism(q, z, sampling, N, accountant)
    if rounds == 0:
        return 0.0
    if z == 0:
        return math.inf
    acc = _fresh_accountant(sampling, accountant)
    return float(acc.compose(dp_event(q, z, rounds, sampling, N, accountant)).get_epsilon(delta))


def noise_for_epsilon(target: float, delta: float, q: float, rounds: int, sampling: str = "poisson",
                      N: int | None = None, accountant: str = "rdp", tol: float = 1e-4) -> float:
    """The smallest noise multiplier z (within ``tol``) whose ``epsilon`` after ``rounds`` rounds is <= target,
    by dp-accounting's ``calibrate_dp_mechanism`` (Brent's method, then a check that the bound holds)."""
    check(target > 0 and math.isfinite(target), f"DP target epsilon {target}: expected a finite epsilon > 0")
    check(rounds >= 1, f"DP rounds {rounds}: expected >= 1 to solve a noise multiplier")
    dpa = _library()
    _check_mechanism(q, 1.0, sampling, N, accountant)
    low = 1e-3  # z = 0 is epsilon = inf; below this no useful run lives
    if epsilon(q, low, rounds, delta, sampling, N, accountant) <= target:
        return low
    return float(dpa.calibrate_dp_mechanism(
        lambda: _fresh_accountant(sampling, accountant),
        lambda z: dp_event(q, z, rounds, sampling, N, accountant), target, delta,
        bracket_interval=dpa.LowerEndpointAndGuess(low, 1.0), tol=tol))


class Accountant:
    """The privacy a run has spent: stepped ONCE per round in which a client could have been sampled (the rounds
    are the compositions; a client's local epochs and steps are not), asked for epsilon at delta at any point."""

    def __init__(self, q: float, z: float, delta: float, sampling: str = "poisson", N: int | None = None,
                 accountant: str = "rdp"):
        check(0 < delta < 1, f"DP delta {delta}: expected 0 < delta < 1")
        _check_mechanism(q, z, sampling, N, accountant)
        self.q, self.z, self.delta, self.sampling, self.N, self.accountant = q, z, delta, sampling, N, accountant
        self.rounds = 0

    def step(self, rounds: int = 1) -> None:
        self.rounds += rounds

    def epsilon(self, delta: float | None = None) -> float:
        return epsilon(self.q, self.z, self.rounds, self.delta if delta is None else delta, self.sampling, self.N,
                       self.accountant)

    def metrics(self) -> dict:
        """What a run logs: {"dp_epsilon", "dp_delta", "dp_rounds"}."""
        return {"dp_epsilon": self.epsilon(), "dp_delta": self.delta, "dp_rounds": self.rounds}

    def _mechanism(self) -> dict:
        return {"q": self.q, "z": self.z, "delta": self.delta, "sampling": self.sampling, "N": self.N,
                "accountant": self.accountant}

    def state_dict(self) -> dict:
        return {"rounds": self.rounds, **self._mechanism()}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state.get(k) for k in self._mechanism()}
        check(saved == self._mechanism(), f"the checkpoint's DP accountant is for {saved}; this run is "
                                          f"{self._mechanism()}: resume with the same DP flags")
        self.rounds = int(state["rounds"])


# ----------------------------------------------------------------------------- sampling
def sample_cohort(seed: int, round_idx: int, num_clients: int, q: float, sampling: str = "poisson") -> list[int]:
    """Round ``round_idx``'s clients, sorted, from the stream keyed by (seed, "dp-sampling", round): Poisson, each
    client independently with probability q (the cohort may be empty); fixed, round(q N) distinct clients."""
    rng = seeding.numpy_rng(seed, "dp-sampling", round_idx)
    if sampling == "poisson":
        return np.flatnonzero(rng.random(num_clients) < q).tolist()
    m = _check_mechanism(q, 0.0, sampling, num_clients, "rdp")
    return sorted(rng.choice(num_clients, m, replace=False).tolist())


def expected_cohort(q: float, num_clients: int) -> float:
    """The fixed denominator: q N (Poisson's expected cohort; fixed sampling's cohort size m = q N)."""
    return q * num_clients


# ----------------------------------------------------------------------------- the mechanism
def update_noise_multiplier(z: float, count_noise: float) -> float:
    """Adaptive clipping's noise multiplier for the update, z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that the
    update (z_delta) and the clipped count (std sigma_b on a sum of +-1/2 indicators: sensitivity 1/2, noise
    multiplier 2 sigma_b) compose to ONE Gaussian mechanism of noise multiplier z (Andrew et al. 2021).
    Replace-one relations double both sensitivities, so the same z_delta holds for fixed-size cohorts."""
    if z == 0:
        return 0.0
    check(2 * count_noise > z, f"adaptive clipping: the clipped count's noise std {count_noise} must exceed z / 2 = "
                               f"{z / 2} (else the update gets no budget); raise --dp-count-noise")
    return (z ** -2 - (2 * count_noise) ** -2) ** -0.5


@torch.no_grad()
def clip_(flat: torch.Tensor, clip: float) -> float:
    """Scale ``flat`` in place to L2 norm <= ``clip`` (norms in float64, so rounding never leaves it above);
    returns its norm before clipping. A vector already within the bound is not touched. A non-finite vector (a
    client that diverged) is filled with NaN: the round's sum, and so the global model, turn non-finite, and the
    engine's check stops the run on every rank with status "diverged" in summary.json."""
    norm = float(torch.linalg.vector_norm(flat, dtype=torch.float64))
    if not math.isfinite(norm):
        flat.fill_(math.nan)
        return norm
    if norm <= clip:
        return norm
    scale, now = clip / norm, norm
    while now > clip:  # float rounding of the scaled values may overshoot by an ulp: shrink until it holds
        flat.mul_(scale)
        now = float(torch.linalg.vector_norm(flat, dtype=torch.float64))
        scale = clip / now * (1 - 2 ** -22)
    return norm


class DPMean:
    """DP-FedAvg's aggregate (duck-types ``common.aggregators.Aggregator``): each client's delta theta_k - x clipped
    to L2 <= C over ALL its tensors, summed unweighted (``weight`` is ignored: each user counts once), then
    ``result() = x + (sum + N(0, (z_delta C)^2 I)) / m`` with m FIXED (``args.dp_cohort``, ``expected_cohort``).

    The noise comes from a generator keyed by (seed, "dp-noise", round, cluster) on the sums' device: every rank
    of a torchrun job adds the same noise, and a resumed run the same bits. Adaptive clipping (``args.dp_quantile``
    = gamma, the target fraction of UNCLIPPED updates): each client adds 1[norm <= C] - 1/2 to a count, noised
    with std sigma_b (``args.dp_count_noise``) from the stream (seed, "dp-count-noise", round, cluster); then
    b = noised count / m + 1/2 (clamped to [0, 1]) and C <- C exp(-eta_C (b - gamma)) (``args.dp_clip_lr``), and
    the update's noise multiplier is ``update_noise_multiplier(z, sigma_b)`` so the total stays z.

    ``args``: dp_clip (C, or the initial C), dp_noise (z, the total), dp_cohort (m), seed, and for adaptive
    clipping dp_quantile, dp_clip_lr, dp_count_noise. The round is ``reset``'s ``round_idx`` when given, else one
    more than the last ``result``'s. The engine must call ``reset`` and ``result`` every round, an empty cohort
    included (its noise is part of the release). The rows ``add`` returns (the pre-clip norm) are diagnostics on
    the client's side: they are not private.
    """
    name = "dp-mean"
    stats: tuple[str, ...] = ()
    up = 0
    holds_clients = False

    def __init__(self, like: Sequence[torch.Tensor], args, cluster: int = 0):
        like = [t.detach() for t in like]
        check(len(like) > 0, "DP mean: no parameters to aggregate")
        self.shapes, self.dtypes, self.device = [t.shape for t in like], [t.dtype for t in like], like[0].device
        self.numel, self.cluster, self.seed = P.numel(like), int(cluster), int(args.seed)
        self.clip, self.z, self.cohort = float(args.dp_clip), float(args.dp_noise), float(args.dp_cohort)
        check(self.clip > 0, f"--dp-clip {self.clip}: expected a clipping norm > 0")
        check(self.z >= 0 and math.isfinite(self.z), f"--dp-noise {self.z}: expected a finite z >= 0")
        check(self.z == 0 or math.isfinite(self.clip), "--dp-clip inf with noise: the noise z C would be infinite")
        check(self.cohort > 0, f"DP expected cohort {self.cohort}: expected > 0")
        self.quantile = getattr(args, "dp_quantile", None)
        if self.quantile is not None:
            check(0 < self.quantile < 1, f"--dp-quantile {self.quantile}: expected a fraction in (0, 1)")
            check(math.isfinite(self.clip), "adaptive clipping starts from a finite --dp-clip")
            self.clip_lr, self.count_noise = float(args.dp_clip_lr), float(args.dp_count_noise)
            self.z_update = update_noise_multiplier(self.z, self.count_noise)
        else:
            self.z_update = self.z
        # the clipped deltas' sum, then the count of clients, then sum of (1[norm <= C] - 1/2): ONE flat buffer
        self._flat = torch.zeros(self.numel + 2, dtype=torch.float32, device=self.device)
        self.round, self._next_round, self._x, self._x_flat, self._out, self._metrics = 0, 0, None, None, None, {}

    def reset(self, x: Sequence[torch.Tensor], chosen: Sequence[int] = (), round_idx: int | None = None) -> None:
        """Round start: ``x`` is this cluster's global model now (the deltas' origin)."""
        self._x = list(x)
        self._x_flat = P.flatten(self._x, torch.float32)
        self._flat.zero_()
        self.round = self._next_round if round_idx is None else int(round_idx)
        self._out = None

    @torch.no_grad()
    def add(self, k: int, params: Sequence[torch.Tensor], weight: float = 1.0, stats: dict | None = None) -> dict:
        """Client k's delta, clipped, into the sum; its row: the pre-clip norm and whether it was clipped."""
        check(self._x is not None, "DP mean: add() before reset()")
        if len(params) != len(self.shapes) or any(t.shape != s for t, s in zip(params, self.shapes)):
            raise ValueError(f"DP mean: client {k}'s tensors do not match the model's {len(self.shapes)} shapes")
        delta = P.flatten(params, torch.float32).sub_(self._x_flat)
        norm = clip_(delta, self.clip)
        self._flat[:self.numel].add_(delta)
        self._flat[self.numel] += 1
        self._flat[self.numel + 1] += (norm <= self.clip) - 0.5
        return {"dp_norm": norm, "dp_clipped": norm > self.clip}

    def accumulators(self) -> list[torch.Tensor]:
        """The flat sum (deltas, count, shifted unclipped count), SUMMED across ranks before ``result()``."""
        return [self._flat]

    def pre_reduce(self, rows: dict, chosen: list[int]) -> None:
        """Nothing: every rank's sums add up as they are."""

    def _generator(self, purpose: str) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            seeding.stream_seed(self.seed, purpose, self.round, self.cluster))

    @torch.no_grad()
    def result(self) -> list[torch.Tensor]:
        """x + noised mean delta, in x's dtypes (computed once per round: a second call returns the same)."""
        check(self._x is not None, "DP mean: result() before reset()")
        if self._out is not None:
            return self._out
        total = self._flat[:self.numel].clone()
        std = self.z_update * self.clip if self.z_update else 0.0
        if std > 0:
            total.add_(torch.empty_like(total).normal_(0.0, std, generator=self._generator("dp-noise")))
        new = total.div_(self.cohort).add_(self._x_flat)
        self._out = [t.to(d) for t, d in zip(P.unflatten(new, self._x), self.dtypes)]
        self._metrics = {"dp_clip": self.clip, "dp_noise_std": std, "dp_cohort_size": int(self._flat[self.numel])}
        if self.quantile is not None:
            noise = torch.empty(1, dtype=torch.float64, device=self.device).normal_(
                0.0, self.count_noise, generator=self._generator("dp-count-noise"))
            unclipped = min(1.0, max(0.0, (float(self._flat[self.numel + 1]) + float(noise)) / self.cohort + 0.5))
            self.clip *= math.exp(-self.clip_lr * (unclipped - self.quantile))
            self._metrics |= {"dp_unclipped_fraction": unclipped, "dp_next_clip": self.clip}
        self._next_round = self.round + 1
        return self._out

    def round_metrics(self) -> dict:
        """The last round's clip, noise std and cohort size (the noised unclipped fraction when adaptive). The
        cohort size is not private under Poisson sampling: log it for diagnostics only."""
        return dict(self._metrics)

    def state_dict(self) -> dict:
        """Between rounds: the (adaptive) clip and the next round; the sums are not kept."""
        return {"kind": self.name, "numel": self.numel, "clip": self.clip, "next_round": self._next_round}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.name or state.get("numel") != self.numel:
            raise ValueError(f"aggregator state is for {state.get('kind')} over {state.get('numel')} values; "
                             f"this is {self.name} over {self.numel}")
        self.clip, self._next_round = float(state["clip"]), int(state["next_round"])


# ----------------------------------------------------------------------------- what composes with DP
REFUSALS = {
    "scaffold": "SCAFFOLD sends per-client control variates, data-dependent state the DP mean neither clips nor "
                "noises; run DP with fedavg or fedprox",
    "feddyn": "FedDyn's server state h sums the clients' own updates, unclipped and unnoised, beside the DP mean; "
              "run DP with fedavg or fedprox",
    "fednova": "FedNova weighs clients by their data size and step count, data-dependent weights the DP mean's "
               "unweighted clipped sum cannot carry; run DP with fedavg or fedprox",
    "fisher": "FedFisher weighs each coordinate by the client's Fisher information, data-dependent weights sent "
              "unnoised; DP needs --aggregator mean",
    "entropy": "FedEntropy weighs clients by the entropy of their predictions, data-dependent weights sent "
               "unnoised; DP needs --aggregator mean",
    "aggregator": "DP replaces the mean by its clipped, noised mean; robust and weighted aggregators are not "
                  "private; DP needs --aggregator mean",
    "ifca": "IFCA assigns each client to the cluster whose model fits its data best, a data-dependent choice "
            "released unnoised; DP needs --clustering none",
    "data": "--clustering data groups clients by their data's features, computed unnoised; DP needs "
            "--clustering none",
}
COMPOSING_SERVER_OPTS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")  # post-processing of the noise


def refusal(algorithm: str = "fedavg", aggregator: str = "mean", clustering: str = "none",
            server_opt: str = "fedavg") -> str | None:
    """Why DP cannot run with this combination, in one line, or None. Server optimizers step on the noised mean
    (post-processing), so they compose."""
    if algorithm in REFUSALS:
        return f"--algorithm {algorithm} with DP: {REFUSALS[algorithm]}"
    if aggregator != "mean":
        return f"--aggregator {aggregator} with DP: {REFUSALS.get(aggregator, REFUSALS['aggregator'])}"
    if clustering in REFUSALS:
        return f"--clustering {clustering} with DP: {REFUSALS[clustering]}"
    if server_opt not in COMPOSING_SERVER_OPTS:
        return f"--server-opt {server_opt} with DP: not known to step only on the noised mean"
    return None
