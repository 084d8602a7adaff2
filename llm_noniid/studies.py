"""llm_noniid's studies, declared: what each asks, its arms, seeds, selection, budgets, plateau rule and comparisons.

**The grids** (run by ``run_experiments.py``, reported by ``report.py``, the README blocks by ``results.py``): does
extreme non-IID data break federated training of a small GPT-2 on AG News, and does a method fix it? Every arm is one
``llm_noniid.train`` run per seed (``SEEDS``: 0, 1, 2) on 10 clients with ``LOCAL_STEPS`` local steps each a round;
arms differ from FedAvg on the same partition in one setting group only (``arms``, by ``--mode``):

* ``failure``: topic skew a = 0.01 (``TOPIC``) x FedAvg, FedProx at every mu of ``MUS``, SCAFFOLD, fewer clients a
  round (and 5x the rounds at 2 of 10: equal steps), data-aware clusters, IFCA (4), local training only, and FedAvg
  for ``IFCA_EXTRA_ROUNDS`` more rounds (IFCA's equal-compute reference); iid shards as the contrast.
* ``main``: which splits hurt (``MAIN_PARTS``: iid, topic a = 0.1, style, token skew) x FedAvg, FedProx, SCAFFOLD.
* ``calibrate``: runs built to show one failure each (divergence, oscillation, drift), the detectors' classes
  (``KNOWN``, beside the healthy arms ``HEALTHY_ARMS``).
* ``headline``: FedAvg, FedProx, SCAFFOLD and IFCA (4) on iid and topic a = 0.01 (``HEADLINE_PARTS``).
* ``quick``: FedAvg / FedProx / SCAFFOLD on the four partitions, 4 rounds (a smoke test).

Two regimes train them. **From scratch** (``STUDY``): a 2-layer GPT-2 trained whole at lr 1 for ``ROUNDS``
rounds; no selection (one rate, FedProx at every mu). **Pretrained** (``PRETRAINED``): LoRA on a base pretrained
here (``BASE_FLAGS``), local AdamW at a peak rate decaying by a cosine over ``PRETRAINED_ROUNDS`` rounds, on the AG
News split of ``SHARED_AG_NEWS``; its selection (``SELECTION_STUDY``, ``CRITERION``) runs first on a selection
split (10 % of the training texts) at seed ``SELECT_SEED`` and half the rounds: FedAvg's rate on iid shards
(``LR_SELECTION`` over ``LR_GRID``), then FedProx's mu at that rate on each of ``SELECT_PARTS`` (``MU_SELECTION``),
the lowest final validation perplexity, a pick at the edge recorded, not extended; ``setting_of`` reads the choice
back for the arms. Budgets: the grid's rounds, and twice them for the arms of ``twins`` (the headline's, and in the
pretrained regime the main grid's other splits). Plateau: a run is at its plateau when its last ``PLATEAU_TAIL`` of
evaluations improve its best validation perplexity by less than ``PLATEAU_GAIN``; under a decaying rate that holds
by construction, so the budget check decides: twice the rounds gain less than ``BUDGET_GAIN``. Comparisons (each
table one Holm family, arms named by ``name``, built by ``table_study``): every arm against FedAvg on its partition
in both perplexities (``KEYS``; the family "<mode> grid"), the ``equal_compute`` pairs ("equal compute", matched on
training tokens), each arm on a skewed split against the same arm on iid ("does the split hurt"), and the headline
arms of both regimes in % of their reference (``SIDE_BY_SIDE``, ``side_by_side_study``: "side by side").

**The pretrained regime's verdicts** (``PRETRAINED_STUDY``, the top README's line, ``results.py``): SCAFFOLD -
FedAvg on each of the five splits (``SPLITS``), one Holm family over the splits since the sentence concludes across
them, and FedAvg on topic skew against iid shards, a family of its own; seeds 0, 1, 2, equal steps; plateau
``PLATEAU``: twice the rounds (the R120 twins) lower the final perplexity by at most half the seeds' sd.

**The detector study** (``detector_study.py``, declared at its top): do the failure detectors' thresholds, chosen
on the pretrained grid's calibration runs (seeds 0-2, the classes of ``KNOWN``), hold on runs of new seeds (3, 4, 5)?
**The privacy-utility study** (``privacy_study.py``, declared at its top): what accuracy user-level DP-FedAvg keeps on
Shakespeare at epsilon 1, 3 and 8 against the same run without noise. **McMahan et al. 2017's table**
(``mcmahan_study.py``, declared at its top): how many fewer rounds FedAvg needs than FedSGD to reach a target
accuracy on Shakespeare; its plateau rule is ``MCMAHAN_PLATEAU`` here, its target ``results.MCMAHAN_TARGET``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from common import study as SD
from common.errors import UsageError
from common.plateau import Plateau
from common.study import Arm, Comparison, Grid, Study

MODES = ("quick", "failure", "main", "calibrate", "select", "headline", "analyze")
REGIMES = ("scratch", "pretrained")
SEEDS = "0,1,2"
ROUNDS = 40  # the study's rounds; arms at equal compute run a multiple of them
EVAL_EVERY = 2
LOCAL_STEPS = 8  # every grid's local steps per round (calibrate's drifting arm: 8x them)
STUDY = ["--model", "tiny-gpt2", "--lora-r", "0", "--tokenizer", "bpe", "--bpe-vocab-size", "2048", "--seq-len", "48",
         "--max-train-examples", "0", "--max-eval-examples", "300", "--num-clients", "10", "--batch-size", "8",
         "--local-steps", str(LOCAL_STEPS), "--local-optimizer", "sgd", "--learning-rate", "1.0", "--max-grad-norm",
         "1.0", "--client-holdout", "0.1", "--eval-every", str(EVAL_EVERY), "--num-rounds", str(ROUNDS)]
IID = ["--partition", "iid"]
TOPIC = ["--partition", "topic_skew", "--alpha", "0.01"]
FEDAVG = ["--algorithm", "fedavg"]
SCAFFOLD = ["--algorithm", "scaffold"]
MUS = ("0.001", "0.01", "0.1", "1")  # FedProx's mu sweep, in every grid
# --regime pretrained, the source's: LoRA (r 8, attention and MLP) on a base pretrained here (pretrain.py with
# BASE_FLAGS: 0.68 M parameters) with its own tokenizer, local AdamW at a rate decaying by a cosine over the rounds;
# --learning-rate and FedProx's mu are chosen by ``run_experiments.select``. Each seed trains on 1,000 training
# texts, where validation perplexity stops improving within 60 rounds on 2 cores (measured: README)
BASE_FLAGS = ["--n-layer", "2", "--n-embd", "128", "--n-head", "2", "--vocab-size", "2048"]
PRETRAINED = ["--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--tokenizer", "auto", "--seq-len", "64",
              "--max-train-examples", "1000", "--max-eval-examples", "300", "--num-clients", "10", "--batch-size",
              "8", "--local-steps", str(LOCAL_STEPS), "--local-optimizer", "adamw", "--lr-schedule", "cosine",
              "--max-grad-norm", "1.0", "--client-holdout", "0.1"]
PRETRAINED_ROUNDS = 60
LR_GRID = ("0.001", "0.003", "0.01", "0.03")  # FedAvg's peak rate on IID shards, chosen on the selection split
SELECT_SEED = 100  # the selection runs' seed, apart from the reported seeds
# select's rule: the lowest final validation perplexity of one run (seed SELECT_SEED, half the rounds) on the
# selection split, ties to the smaller value; a choice at the edge of its grid is recorded, not extended
LR_SELECTION = Grid("--learning-rate", tuple(map(float, LR_GRID)), "final_val_ppl", "min", split="selection")
MU_SELECTION = Grid("--mu", tuple(map(float, MUS)), "final_val_ppl", "min", split="selection")
SELECTION_STUDY = "llm_noniid pretrained"  # selection.json (``common.study``'s record): "learning_rate" (FedAvg on
# iid shards), then "mu/<partition>" (FedProx at that rate) for each of SELECT_PARTS; runs: base, rounds, seeds
CRITERION = ("the lowest final validation perplexity on the selection split (10% of the training texts) of one run "
             f"(seed {SELECT_SEED}, half the rounds), ties to the smaller value: FedAvg's peak rate on iid shards, "
             "then FedProx's mu at that rate on each partition; a choice at the edge of its grid is recorded, not "
             "extended")
HEADLINE_PARTS = (("iid", IID), ("topic a=0.01", TOPIC))
IFCA = ["--clustering", "ifca", "--num-clusters", "4"]  # the headline's clustered arm
MAIN_PARTS = (("iid", IID), ("topic a=0.1", ["--partition", "topic_skew", "--alpha", "0.1"]),
              ("style (length)", ["--partition", "style_skew", "--style-criterion", "length"]),
              ("token (frequency)", ["--partition", "token_skew", "--token-skew", "frequency"]))
SELECT_PARTS = (*HEADLINE_PARTS, *MAIN_PARTS[1:])  # the partitions FedProx's mu is chosen for (pretrained regime)
SHARED_AG_NEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news_csv" / "test.csv"
# IFCA's starting models: --ifca-init-rounds (5) rounds' worth of local steps of one client for each of the
# --num-clusters (4) clusters = 4 * 5 * 8 = 160 local steps = 2 full rounds of 10 clients x 8 steps
IFCA_EXTRA_ROUNDS = 2


def rounds_flags(rounds: int) -> list[str]:
    """--num-rounds, with evaluation as often per round of full compute as the study's (the same number of points)."""
    return ["--num-rounds", str(rounds), "--eval-every", str(max(1, EVAL_EVERY * rounds // ROUNDS))]


def algorithms(mus: dict | None, part: str | None = None, sweep: bool = False) -> list[tuple[str, list[str]]]:
    """(arm label, flags) of FedAvg, FedProx and SCAFFOLD on partition ``part``: FedProx at the mu ``mus`` ({partition:
    mu}, the pretrained regime's selection) chose for it, except in a ``sweep``; else at every mu of MUS."""
    chosen = [str(mus[part])] if mus and part in mus and not sweep else MUS
    return [("FedAvg", FEDAVG), *((f"FedProx mu={mu}", ["--algorithm", "fedprox", "--mu", mu]) for mu in chosen),
            ("SCAFFOLD", SCAFFOLD)]


def headline_arms(mus: dict | None, part: str) -> list[tuple[str, list[str]]]:
    """(arm label, flags) of the headline's arms on partition ``part``: ``algorithms`` and FedAvg + IFCA (4)."""
    return [*algorithms(mus, part), ("FedAvg + IFCA (4)", FEDAVG + IFCA)]


def budget_arms(mus: dict | None, part: str, clustered: bool = True) -> list[tuple[str, list[str]]]:
    """The arms that run again at twice the rounds (the plateau's budget check) on partition ``part``: the
    headline's (``clustered`` False: without IFCA, the main grid's), FedProx only at the mu the selection chose (a
    grid without a choice, the from-scratch regime's, has no FedProx twin)."""
    return [(label, a) for label, a in (headline_arms(mus, part) if clustered else algorithms(mus, part))
            if not label.startswith("FedProx") or (mus and part in mus)]


def twins(mode: str, mus: dict | None) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """(partition, its flags, ``budget_arms``) of the runs ``mode`` plans at twice the rounds: the headline's arms on
    its partitions; the main grid's on its other splits where a selection chose (the pretrained regime, whose
    decaying rate leaves the second budget as the only plateau check); none for the other modes."""
    if mode == "headline":
        return [(part, split, budget_arms(mus, part)) for part, split in HEADLINE_PARTS]
    if mode == "main" and mus:
        return [(part, split, budget_arms(mus, part, clustered=False)) for part, split in MAIN_PARTS
                if part not in dict(HEADLINE_PARTS)]
    return []


def arms(mode: str, rounds: int = ROUNDS, mus: dict | None = None, lr: float = 1.0) -> list[tuple[str, str, list]]:
    """(partition label, arm label, train.py flags) of every arm of ``mode`` (one run per seed each) at ``rounds``
    rounds and the grid's rate ``lr``; the equal-compute arms run more rounds. ``mus`` ({partition: mu}, the
    pretrained regime's selection): FedProx at that mu, except in the failure grid's sweep; else every mu of MUS."""
    algos = lambda part=None, sweep=False: algorithms(mus, part, sweep)  # noqa: E731

    lp, one = ["--participation-rate", "0.2"], ["--participation-rate", "0.1"]
    if mode == "failure":
        # the mu sweep and the clustering arms where they matter (topic skew); on iid the contrast arms only
        out, contrast = [], ("FedAvg", f"FedProx mu={(mus or {}).get('iid', '0.1')}", "SCAFFOLD")
        for part, split in HEADLINE_PARTS:
            out += [(part, name, split + a) for name, a in algos(part, sweep=part != "iid")
                    if part != "iid" or name in contrast]
            fedavg = [("FedAvg, 2 of 10 clients/round", lp),
                      (f"FedAvg, 2 of 10 clients/round, {5 * rounds} rounds", lp + rounds_flags(5 * rounds)),
                      ("FedAvg, 1 client/round", one)]
            if part != "iid":
                fedavg += [("FedAvg + data clusters", ["--clustering", "data"]),
                           ("local only (10 clusters)", ["--clustering", "data", "--num-clusters", "10"])]
            fedavg += [("FedAvg + IFCA (4)", IFCA),
                       (f"FedAvg, {rounds + IFCA_EXTRA_ROUNDS} rounds", rounds_flags(rounds + IFCA_EXTRA_ROUNDS))]
            out += [(part, name, split + FEDAVG + a) for name, a in fedavg]
        return out
    if mode == "main":
        return [(p, name, f + a) for p, f in MAIN_PARTS for name, a in algos(p)]
    if mode == "headline":  # FedProx at the mu the selection chose for the partition (at every mu without one)
        return [(part, name, split + a) for part, split in HEADLINE_PARTS for name, a in headline_arms(mus, part)]
    if mode == "calibrate":
        # built to fail: divergence (8x the rate, no clipping); drift (8x the local steps, on iid and topic shards);
        # oscillation (one topic-skewed client per round, 8x its local steps, half the rounds)
        k8, r8, r2 = ["--local-steps", str(8 * LOCAL_STEPS)], max(1, rounds // 8), max(1, rounds // 2)
        return [("iid", f"FedAvg lr {8 * lr:g}, no clipping", IID + FEDAVG + ["--learning-rate", f"{8 * lr:g}",
                                                                             "--max-grad-norm", "0"]),
                ("topic a=0.01", "FedAvg, 1 client/round", TOPIC + FEDAVG + one),
                *((part, f"FedAvg, {8 * LOCAL_STEPS} local steps, {r8} rounds", split + FEDAVG + k8 + rounds_flags(r8))
                  for part, split in HEADLINE_PARTS),
                ("topic a=0.01", f"FedAvg, 1 client/round, {8 * LOCAL_STEPS} local steps, {r2} rounds",
                 TOPIC + FEDAVG + one + k8 + rounds_flags(r2))]
    if mode == "quick":
        return [(p, name, f + a) for p, f in MAIN_PARTS for name, a in algos(sweep=True)
                if name in ("FedAvg", "FedProx mu=0.1", "SCAFFOLD")]
    raise UsageError(f"--mode {mode!r} has no runs; expected one of {', '.join(MODES[:-1])}")


def equal_compute(rounds: int = ROUNDS) -> list[tuple[str, str, str]]:
    """(partition, arm, reference arm) pairs at equal training compute."""
    return [(p, a, r) for p in ("iid", "topic a=0.01") for a, r in (
        ("FedAvg + IFCA (4)", f"FedAvg, {rounds + IFCA_EXTRA_ROUNDS} rounds"),
        (f"FedAvg, 2 of 10 clients/round, {5 * rounds} rounds", "FedAvg"))]


def setting_of(record: dict) -> dict:
    """What a selection record (``run_experiments.select``'s) sets for the grids: {"learning_rate": the rate, "mu":
    {partition: mu as MUS spell it, the flag and run names' spelling}}, each only where chosen ({} for no record: the
    from-scratch regime keeps its one rate)."""
    out = {}
    if record and record["choices"].get("learning_rate", {}).get("chosen") is not None:
        out["learning_rate"] = float(record["choices"]["learning_rate"]["chosen"])
    mus = {part: SD.candidate_key(mu) for part, mu in (SD.chosen(record, "mu/") if record else {}).items()
           if mu is not None}
    return {**out, "mu": mus} if mus else out


# ------------------------------------------------------------------------------------ what the tables compare
KEYS = ("final_val_ppl", "final_personal_val_ppl")  # the perplexities every table compares
# at plateau: the last PLATEAU_TAIL of a run's evaluations improve its best validation perplexity by less than
# PLATEAU_GAIN; a decaying rate meets it by construction, so the budget check: twice the rounds gain < BUDGET_GAIN
PLATEAU_TAIL, PLATEAU_GAIN, BUDGET_GAIN = 0.2, 0.01, 0.02


def name(*key: str) -> str:
    """A table's arm, its labels as one name: 'topic a=0.01 / SCAFFOLD' (an arm's label holds no ' / ')."""
    return " / ".join(key)


def table_study(family: str, refs: dict[tuple, tuple], keys: Sequence[str], seeds: tuple[int, ...],
                compute: str = "") -> Study:
    """The study of one grid table: each arm of ``refs`` {(partition, arm): its reference} against its reference
    in each of ``keys``, one Holm family ``family``, arms named by ``name``; ``compute``: what each pair is matched
    on (``common.study.COMPUTE``; empty: not stated)."""
    arms_ = dict.fromkeys(name(*k) for pair in refs.items() for k in pair)
    return Study(family, tuple(Arm(a, "llm_noniid.train") for a in arms_), seeds, compute=compute,
                 comparisons=tuple(Comparison(name(*k), name(*ref), family, key) for k, ref in refs.items()
                                   for key in keys))


# the side by side's comparisons, {metric: the reference of arm (regime, partition, arm)}: each arm against FedAvg
# on its partition, and against the same arm on iid shards, in % of the reference's perplexity
SIDE_BY_SIDE: dict[str, Callable[[str, str, str], tuple[str, str, str]]] = {
    "% vs FedAvg": lambda r, p, a: (r, p, "FedAvg"), "% vs iid": lambda r, p, a: (r, "iid", a)}


def side_by_side_study(keys: Sequence[tuple[str, str, str]], seeds: tuple[int, ...]) -> Study:
    """The side by side's study: the headline arms ``keys`` (regime, partition, arm) of both regimes, each against
    its references of ``SIDE_BY_SIDE`` that ran (itself excepted), one Holm family over the table."""
    return Study("side by side", tuple(Arm(name(*k), "llm_noniid.train") for k in keys), seeds,
                 comparisons=tuple(Comparison(name(*k), name(*ref(*k)), "side by side", m) for k in keys
                                   for m, ref in SIDE_BY_SIDE.items() if ref(*k) != k and ref(*k) in keys))


# runs whose behaviour is known by construction, independent of the detectors (see the README); FedProx mu = 1
# (mu * lr = 1: every step returns to the global model) is left out of the healthy class
HEALTHY_ARMS = ("FedAvg", "FedProx mu=0.001", "FedProx mu=0.01", "FedProx mu=0.1", "SCAFFOLD")
KNOWN = {
    "healthy (iid, full participation)": lambda p, a: p == "iid" and a in HEALTHY_ARMS,
    "diverging (8x the rate, no clipping)": lambda p, a: a.startswith("FedAvg lr ") and a.endswith(", no clipping"),
    "oscillating (topic skew, 1 client/round)": lambda p, a: p == "topic a=0.01" and a == "FedAvg, 1 client/round",
    "oscillating by construction (topic skew, 1 client/round, 8x the local steps)":
        lambda p, a: p == "topic a=0.01" and a.startswith(f"FedAvg, 1 client/round, {8 * LOCAL_STEPS} local steps"),
    "drifting (topic skew, full participation)": lambda p, a: p == "topic a=0.01" and a in HEALTHY_ARMS,
    "drifting by construction (iid, 8x the local steps)":
        lambda p, a: p == "iid" and a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps"),
    "drifting by construction (topic skew, 8x the local steps)":
        lambda p, a: p == "topic a=0.01" and a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps"),
}


# ------------------------------------------------------------------------- the pretrained regime's verdicts
SPLITS = {"iid": "iid", "topic_a0.01": "topic α = 0.01", "topic_a0.1": "topic α = 0.1",
          "style_length": "style", "token_frequency": "token skew"}
# the grids' partition flags of each split
PARTITIONS = {"iid": ("--partition", "iid"), "topic_a0.01": ("--partition", "topic_skew", "--alpha", "0.01"),
              "topic_a0.1": ("--partition", "topic_skew", "--alpha", "0.1"),
              "style_length": ("--partition", "style_skew", "--style-criterion", "length"),
              "token_frequency": ("--partition", "token_skew", "--token-skew", "frequency")}
# the rate decays to 0 by a cosine, so a last-fraction rule holds by construction: a run is judged only against its
# 120-round twin (run_experiments --mode headline: FedAvg and SCAFFOLD, every seed, on the headline partitions iid
# and topic α = 0.01; the other splits' arms have none), within half the seeds' sd of the final perplexity
PLATEAU = Plateau("twice the rounds lower the final validation perplexity by at most 0.5 sd of the seeds",
                  "R120", tolerance=0.5, metric="val_ppl", value="final_val_ppl", direction="min",
                  schedule="decayed")
# SCAFFOLD against FedAvg, one family over the splits, since the sentence concludes across them; FedAvg on topic
# skew against iid shards, a family of its own
PRETRAINED_STUDY = Study(
    "pretrained", arms=tuple(Arm(f"{a}_{s}", "llm_noniid.train", ("--algorithm", a, *PARTITIONS[s]))
                             for s in SPLITS for a in ("fedavg", "scaffold")), seeds=(0, 1, 2),
    budgets={"": (), "R120": ("--rounds", "120")}, plateau=PLATEAU, compute="equal steps",
    comparisons=(*(Comparison(f"scaffold_{s}", f"fedavg_{s}", "SCAFFOLD − FedAvg over the splits")
                   for s in SPLITS), Comparison("fedavg_topic_a0.01", "fedavg_iid", "topic skew")))


# ------------------------------------------------------------------------------ McMahan et al. 2017's table
# The McMahan table's plateau rule (common.plateau; its rates are constant): a run is still improving when its best
# evaluation is its last, or when the mean of its last third of evaluations beats the third before's by more than
# MCMAHAN_Z standard errors of the curve's own noise (the trend check: the curves move by a point or more from one
# evaluation to the next, so no one evaluation, the last or the best of the last third, decides)
MCMAHAN_Z = 2.0
MCMAHAN_PLATEAU = Plateau(f"the best is not the last and the last third is within {MCMAHAN_Z:g} se of the "
                          "third before", metric="test_accuracy", direction="max", trend_z=MCMAHAN_Z)
