"""lora_glue_fl's studies: centralized LoRA against FedAvg of LoRA adapters on real SST-2 and MRPC, pretrained
MiniLM (LoRA r = 8 on query / value and the classifier head). ``run_grid.py`` runs them (the selection, then the
reported cells), ``results.py`` reports them (the README blocks, from the committed records).

**The question.** What federating LoRA fine-tuning costs against centralized LoRA at equal compute, and which merge
of the clients' adapters loses least (SVD to rank r, naive A/B averaging, the exact merge whose rank grows), on iid
and label-skewed shards, over many rounds or in one shot.

**Arms** (``<method>[_<sharding>]``, ``design_arms`` of a design of ``DESIGNS``): ``central`` (main_glue_lora.py,
rounds x local epochs epochs), ``svd`` / ``naive`` / ``exact`` (fedavg_rounds.py ``--aggregation`` the method, the
rounds of the local epochs), ``oneshot`` (fedavg_rounds.py, 1 round of all the epochs, SVD merge) and its
``oneshot-naive`` (fedavg_merge.py's naive merge of the same client adapters); shardings ``SHARDINGS`` over the
clients: iid, Dirichlet α = 1 or 0.1 (at least --min_per_label of each label), one label per client. Each arm trains
at the rate chosen for its family (``FAMILY``).

- **SST-2** (``SST2``): design ``merges`` (centralized; SVD, naive and one-shot on iid and Dirichlet α = 0.1 shards;
  exact on iid), seeds ``SEEDS``, dev accuracy.
- **MRPC** (``MRPC``): design ``small`` (centralized; SVD and naive on iid and Dirichlet α = 0.1 shards), seeds
  ``MRPC_SEEDS``, dev F1 with accuracy beside it; the encoder's pooler trained with the head (``TRAIN_POOLER``: a
  frozen one left a seed at the majority class).

**Selection** (``rate_grid``, ``criterion``): per task and arm family one AdamW rate from ``LR_GRID`` (the exact
merge's family: ``EXACT_LR_GRID``, lower: it trains a rank-K^t r adapter), run on the family's selection cell
(``SELECTION_CELL``, iid shards) at ``SELECT_SEEDS`` (never a reported seed) and scored on the selection split
carved from the training file (the dev set is never read): the highest final selection-split main metric, mean over
the selection seeds, ties to the smaller rate; a rate at the edge of its grid adds the next one past it and chooses
again, ``EXTEND`` time(s) at most.

**Budgets.** ``ROUNDS`` rounds of ``LOCAL_EPOCHS`` local epochs; every arm the same epochs of compute (equal
optimizer steps, checked from the records). The second budget: a multi-round run's state at ``CHECK_AT`` of its
rounds (a complete shorter run); a centralized or one-shot run's twin at ``TWIN_EPOCHS`` x its (local) epochs
(``TWINNED``, ``twin_arm``; run_grid.py --budget_check), no arm of any table.

**Plateau.** ``PLATEAU`` (a multi-round run's last third gains at most 1 sd of the selection split's sampling
noise), ``BUDGET`` (a run against its twin, the same tolerance), ``DECAYED`` (one local run decayed to 0 without a
twin: not checked).

**Comparisons** (``declare``): per task, every arm against centralized LoRA, one Holm family (``VS_CENTRAL``); the
merge contrasts between two of its arms (``CONTRASTS``), another (``MERGE_FAMILY``); compute matched in optimizer
steps.
"""
from __future__ import annotations

from common import plateau, study

# ------------------------------------------------------------------------------------------------- arms
TASKS = {"sst2": ("sst2", "glue_sst2", 64), "mrpc": ("mrpc", "glue_mrpc", 128)}  # name -> (task, folder, length)
SHARDINGS = {"iid": ["--mode", "iid"], "dir1": ["--mode", "dirichlet", "--alpha", "1"],
             "dir0.1": ["--mode", "dirichlet", "--alpha", "0.1"],
             "category": ["--mode", "category", "--category_key", "label"]}
HEADLINE = [("central", None), ("svd", "iid"), ("naive", "iid"), ("oneshot", "iid"), ("svd", "dir0.1"),  # in order
            ("naive", "dir0.1"), ("oneshot", "dir0.1")]                                               # of priority
MERGES = HEADLINE + [("exact", "iid")]
FULL = MERGES + [("svd", "category"), ("svd", "dir1"), ("naive", "dir1")]
SMALL = [("central", None), ("svd", "iid"), ("naive", "iid"), ("svd", "dir0.1"), ("naive", "dir0.1")]
DESIGNS = {"headline": HEADLINE, "merges": MERGES, "full": FULL, "small": SMALL, "central": [("central", None)]}
FAMILY = {"central": "central", "svd": "multi-round", "naive": "multi-round", "exact": "exact",
          "oneshot": "one-shot"}  # method -> the arm family whose learning rate it uses
# the arms in words, in the tables' order (methods, then shardings)
METHODS = {"central": "centralized LoRA", "svd": "FedAvg, SVD merge", "naive": "FedAvg, naive A/B averaging",
           "exact": "FedAvg, exact merge", "oneshot": "one-shot, SVD merge", "oneshot-naive": "one-shot, naive merge"}
SHARDS = {"iid": "iid shards", "dir0.1": "Dirichlet α = 0.1", "dir1": "Dirichlet α = 1",
          "category": "one label per client"}
SCRIPTS = {"central": "lora_glue_fl.main_glue_lora", "oneshot-naive": "lora_glue_fl.fedavg_merge"}  # else rounds
SEEDS = (0, 1, 2, 3, 4)  # the reported seeds (run_grid.py --seeds) and SST-2's
MRPC_SEEDS = (0, 1, 2)   # MRPC's (run_grid.py --tasks mrpc --seeds 0 1 2)
TRAIN_POOLER = ("mrpc",)  # the tasks whose runs also train BERT's pooler (run_grid.py --train_pooler)


def arm_name(method: str, shard: str | None) -> str:
    """An arm as its runs are named less the task and seed: ``central``, ``svd_iid``, ``oneshot-naive_dir0.1``."""
    return method if shard is None else f"{method}_{shard}"


def split(arm: str) -> tuple[str, str | None]:
    """(method, sharding or None) of an arm's name."""
    method, _, shard = arm.partition("_")
    return method, shard or None


def family(arm: str) -> str:
    """The arm family whose selected rate the arm uses (``FAMILY``; a one-shot naive merge: one-shot's)."""
    return FAMILY[split(arm)[0].replace("oneshot-naive", "oneshot")]


def design_arms(cells=MERGES) -> tuple[str, ...]:
    """The arms of a design, in the table's order: centralized, then per sharding its methods (a one-shot cell also
    reports its naive merge)."""
    arms = [arm_name(m, s) for m, s in cells] + [arm_name("oneshot-naive", s) for m, s in cells if m == "oneshot"]
    order = list(METHODS)
    shards = [s for s in SHARDS if any(split(a)[1] == s for a in arms)]
    return tuple(sorted(arms, key=lambda a: (split(a)[1] is not None, shards.index(split(a)[1]) if split(a)[1] else 0,
                                             order.index(split(a)[0]))))


# ------------------------------------------------------------------------------------------------- selection
SELECTION_CELL = {"central": ("central", None), "multi-round": ("svd", "iid"), "one-shot": ("oneshot", "iid"),
                  "exact": ("exact", "iid")}  # family -> the cell (method, sharding) its selection runs train
LR_GRID = (1e-3, 2e-3, 5e-3)  # AdamW rates (linear decay to 0 in every local run): run_grid.py --lr_grid
EXACT_LR_GRID = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3)  # the exact family's (--exact_lr_grid)
SELECT_SEEDS = (100,)  # apart from the reported seeds: no reported run chose anything
EXTEND = 1  # times a rate at the edge of its grid adds the next one past it (run_grid.py --extend)


def families(cells) -> list[str]:
    """The arm families of a design's cells, in ``SELECTION_CELL``'s order."""
    return [f for f in SELECTION_CELL if f in {FAMILY[m] for m, _ in cells}]


def rate_grid(task: str, rates, extend: int = EXTEND) -> study.Grid:
    """A family's rate selection on ``task``: ``rates`` scored by each run's final selection-split main metric (the
    task's, glue_tasks), the highest best, extended past an edge ``extend`` times."""
    from lora_glue_fl.glue_tasks import get_task
    return study.Grid("--learning_rate", tuple(rates), "final.selection_" + get_task(TASKS[task][0]).main_metric,
                      "max", split="selection", extend=extend)


def criterion(seeds, extend: int) -> str:
    """The selection rule in words (selection.json's ``criterion``), at the selection ``seeds`` and ``extend``."""
    return (f"the rate with the best final selection-split metric (selection_<main metric>), mean over "
            f"selection seeds {seeds}; ties: the smaller rate; a rate at the edge of its grid "
            f"extended past it {extend} time(s) at most")


# ------------------------------------------------------------------------------------------------- budgets
ROUNDS, LOCAL_EPOCHS = 6, 0.5  # FedAvg rounds x local epochs; centralized and one-shot runs train their product
# --budget_check: a cell whose local training is one decayed run (centralized, one-shot) again at TWIN_EPOCHS x its
# epochs, named as its arm with TWIN_SUFFIX (``twin_arm``); TWIN is the centralized one
TWIN_SUFFIX, TWIN_EPOCHS = "-x2", 2
TWINNED = ("central", "oneshot")  # the cells whose runs get a twin (a one-shot cell's naive merge with it)
KINDS = {"centralized": ("central",), "one-shot": ("oneshot", "oneshot-naive")}  # the arms a twin judges, by kind


def twin_arm(arm: str) -> str:
    """The arm name of an arm's --budget_check twin: ``central-x2``, ``oneshot-x2_iid``, ``oneshot-naive-x2_iid``."""
    method, shard = split(arm)
    return arm_name(method + TWIN_SUFFIX, shard)


def has_twin(arm: str) -> bool:
    """Whether a --budget_check twin judges the arm's runs: the arms of a ``TWINNED`` cell (``KINDS``)."""
    return any(split(arm)[0] in methods for methods in KINDS.values())


TWIN = twin_arm("central")  # read by BUDGET as the centralized runs' second budget, never an arm

# ------------------------------------------------------------------------------------------------- plateau
# Every local run (centralized, or a client's round) decays its rate linearly to 0, so a rule on the last part of one
# decayed run holds by construction: centralized and one-shot runs (one local run each) are not checked by it. Such a
# run has a second budget where run_grid.py --budget_check ran its twin (``twin_arm``: the centralized run at twice
# the epochs; the one-shot run with its clients at twice the local epochs, merged the same way; the same rate decaying
# over all of them): the run is still improving when the twin's final selection accuracy beats its own by more than
# 1 sd of the split's sampling noise (``BUDGET``); without a twin it is not checked (a one-shot naive merge scored
# before fedavg_merge.py scored the selection split has nothing to judge it by either).
# A multi-round run restarts the rate every round, and its state after round 4 is exactly that of a 4-round run
# (schedules, batches and dropout depend on the seed, round and client, not on --rounds): its last third (rounds 5-6)
# is a second budget, and the run is still improving when it gained more than 1 sd of the selection split's own
# sampling noise (binomial, at the arm's accuracy) over it. It cannot say whether more rounds would still gain.
# MRPC's too reads accuracy, not its reported F1: F1's sampling noise has no such closed form.
CHECK_AT = 2 / 3  # the second budget: this fraction of the rounds
PLATEAU = plateau.Plateau("the last third of the rounds gains at most 1 sd of the selection split's sampling noise "
                          "over the same run at two thirds of them", check_budget="the last third", tolerance=1.0,
                          metric="selection_accuracy", value="selection_accuracy", direction="max")
DECAYED = plateau.Plateau("one local run, its rate decayed to 0: not checked", schedule="decayed",
                          metric="selection_accuracy", direction="max")
BUDGET = plateau.Plateau("the same run with its local training at twice the epochs (its rate decaying over all of "
                         "them; a one-shot run merged the same way) ends at most 1 sd of the selection split's "
                         "sampling noise above it", check_budget="twice the epochs",
                         tolerance=1.0, metric="selection_accuracy", value="selection_accuracy", direction="max",
                         schedule="decayed")

# ------------------------------------------------------------------------------------------------- comparisons
ARMS = design_arms()
# (arm a, arm b, what a − b answers): the merge contrasts; a study's are those between two of its arms, one Holm family
CONTRASTS = (
    *((f"svd_{s}", f"naive_{s}", "SVD merge − naive A/B averaging") for s in ("iid", "dir0.1")),
    *((f"oneshot_{s}", f"oneshot-naive_{s}", "SVD merge − naive A/B averaging, one-shot") for s in ("iid", "dir0.1")),
    ("exact_iid", "svd_iid", "exact (rank grows) − SVD (rank 8)"),
    *((f"svd_{s}", f"oneshot_{s}", "multi-round − one-shot, SVD merge") for s in ("iid", "dir0.1")),
    *((f"naive_{s}", f"oneshot-naive_{s}", "multi-round − one-shot, naive merge") for s in ("iid", "dir0.1")),
    ("svd_iid", "svd_dir0.1", "iid − label-skewed shards, SVD merge"),
)
VS_CENTRAL = "− centralized"
MERGE_FAMILY = "merge contrasts"


def declare(name: str, arms: tuple[str, ...], seeds: tuple[int, ...], flags: tuple[str, ...] = ()) -> study.Study:
    """A task's study: its arms (``flags``: what every run of the task adds), every arm against centralized LoRA
    one Holm family, the merge contrasts between two of its arms (``CONTRASTS``, the question as the comparison's
    metric) another; compute matched in optimizer steps."""
    def aggregation(arm: str) -> tuple[str, ...]:
        method = split(arm)[0].replace("oneshot-naive", "naive").replace("oneshot", "svd")
        return () if arm == "central" else ("--aggregation", method)

    return study.Study(
        name, arms=tuple(study.Arm(a, SCRIPTS.get(split(a)[0], "lora_glue_fl.fedavg_rounds"), aggregation(a) + flags)
                         for a in arms),
        seeds=seeds, selection_seeds=SELECT_SEEDS, compute="equal steps",
        comparisons=(*(study.Comparison(a, "central", VS_CENTRAL) for a in arms if a != "central"),
                     *(study.Comparison(a, b, MERGE_FAMILY, what) for a, b, what in CONTRASTS
                       if a in arms and b in arms)))


SST2 = declare("minilm_sst2", ARMS, SEEDS)
MRPC = declare("minilm_mrpc", design_arms(SMALL), MRPC_SEEDS, ("--train_pooler",) if "mrpc" in TRAIN_POOLER else ())
STUDIES = {"sst2": SST2, "mrpc": MRPC}
