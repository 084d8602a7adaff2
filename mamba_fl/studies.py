"""mamba_fl's studies, declared once: what each asks, its arms, seeds, selection, budgets, plateau rule and the
comparisons with their Holm families. The grid scripts plan and run them; the report modules read their records.

**The synthetic grid** (``run_grid.py`` runs it, ``results_synthetic.py`` reports it). Does federation close the gap
to central training of a small Mamba2 on the embedded synthetic text, and does any aggregator beat FedAvg?

- Arms: central and central-b4 (``CENTRAL``: FedAvg's number of sequential updates, a ``CLIENTS`` times larger
  batch), FedAvg, FedAvgM (heavy ball), FedMomentum EMA, FedEntropy (T = ``TEMPERATURE``) and FedFisher
  (``FISHER_SAMPLES`` blocks) (``FEDERATED_ARMS``), and FedAvg's ``VARIANTS`` (fresh AdamW every round, plain SGD at
  ``SGD_LR``, 8 local steps), on the d_model-64 ``MODEL`` with ``CLIENTS`` clients, each holding out ``HOLDOUT``.
- Cells: ``LAYERS`` x ``SHARDS`` (the variants at 1 layer on contiguous shards); seeds ``SEEDS``.
- Selection: none; every arm at AdamW rate ``LR``.
- Budgets: ``ROUNDS`` rounds of 1 local step (equal samples: central takes as many ``BATCH_SIZE``-block steps), and
  the longer budget: ``LONG_ARMS`` at ``LONG_FACTOR`` x the rounds (1 layer, ``LONG_SHARD`` shards; ``LONG``).
- Plateau rule ``SYNTHETIC_PLATEAU``: a constant rate, so a run whose last evaluation is its best is still improving.
- Comparisons (``synthetic_study``), three Holm families: "gap" (central and central-b4 − FedAvg in every cell, and
  central − FedAvg with the longer budget), "aggregators" (each of ``AGGREGATORS`` − FedAvg in every cell, and
  FedFisher − FedAvg with the longer budget), "client optimizer" (each variant − FedAvg).

**Real WikiText-2 text at the plateau** (``real_grid.py`` runs it, ``results.py`` reports it). The source's question:
does federation close the gap to central training of Mamba2 LMs, and does any aggregator (FedFisher above all) beat
FedAvg?

- Arms: central, central-b4 and ``FEDERATED`` (FedAvg, FedFisher, FedFisher with the local Fisher, FedEntropy,
  FedAvgM), at a model of ``SIZES``.
- Selection on validation (``grid_of``): each arm's ``CHOICES`` candidates, one run each (seed ``SELECTION_SEED``,
  ``SELECTION_LAYERS`` layer, ``SELECTION_SHARD`` shards) to the plateau rule; the lowest best validation
  perplexity wins among runs below their unigram, a winner at an edge adds the next value past it (``EXTEND`` times
  at most); in two ``PHASES``, the second at FedAvg's chosen rate; ``BEST_OTHER`` (``other_grid``) names the best of
  ``OTHERS`` for the headline. In words: ``criterion``.
- Reported settings (``reported_settings``, their arms ``reported_arms``): the headline (``HEADLINE``: 1 and 2
  layers, ``CLIENTS`` clients on contiguous shards: ``SOURCE_ARMS`` and the best other arm); ``--block all`` adds
  topic shards and 16 clients (4 a round) for ``PAIRED``, and 4 layers for ``SOURCE_ARMS`` (``SETTINGS``). Seeds
  ``SEEDS``; ``PAIRED`` at 1 and 2 layers ``PAIRED_SEEDS``.
- Budgets: each run until ``PATIENCE`` evaluations (``EVAL_EPOCHS`` passes apart: one pass) bring no 1 % gain, at
  most ``MAX_EPOCHS`` passes, its best-validation model scored on the test articles; the equal-compute point at
  ``BUDGET_EPOCHS`` passes (``STAGES``: "plateau" and "budget").
- Plateau rule ``REAL_PLATEAU``: a run whose best validation point is its last evaluation was still improving.
- Comparisons: per table (one setting, one stage) every arm − FedAvg, one Holm family (``setting_study``); across
  tables ``FISHER``: FedFisher − FedAvg in every setting at both stages, one family.
"""
from __future__ import annotations

from collections.abc import Sequence

from common import plateau, study

# ------------------------------------------------------------------------------------------------- both grids
SEEDS = (0, 1, 2)   # every arm's seeds (--seeds)
CLIENTS = 4         # --clients, all taking part every round
BATCH_SIZE = 16     # blocks per optimizer step, clients and central alike
HOLDOUT = 0.1       # every arm trains on the blocks FedEntropy's clients keep after scoring-set hold-out

# ---------------------------------------------------------------------------------------- the synthetic grid
MODEL = ["--d-model", "64", "--d-state", "16", "--head-dim", "16", "--sequence-length", "64", "--sample-tokens", "0"]
FEDERATED_ARMS = {  # arm -> (script, extra flags)
    "fedavg": ("fed_avg.py", []),
    "fedavgm": ("fed_momentum.py", ["--momentum-form", "heavy-ball", "--server-momentum", "0.9", "--server-lr", "1"]),
    "fedmom-ema": ("fed_momentum.py", ["--momentum-form", "ema", "--server-momentum", "0.9", "--server-lr", "1"]),
    "fedentropy": ("fed_entropy.py", []),
    "fedfisher": ("fed_fisher.py", []),
}
CENTRAL = ("central", "central-b4")  # central-b4: FedAvg's sequential updates (a --clients times larger batch)
VARIANTS = {  # FedAvg with other client optimizers / local work: 1 layer, contiguous shards
    "fedavg-reset": ["--client-opt-state", "reset"],
    "fedavg-sgd": ["--optimizer", "sgd"],
    "fedavg-lu8": ["--local-updates", "8"],
}
AGGREGATORS = ("fedfisher", "fedentropy", "fedmom-ema", "fedavgm")  # each compared with FedAvg
LAYERS, SHARDS = (1, 2), ("contiguous", "topic")
ROUNDS = 100        # rounds of the 1-local-step arms
EVAL_EVERY = 10     # rounds between evaluations (every arm evaluates as often)
LR, SGD_LR = 1e-2, 1.0  # AdamW's rate (clients and central), the plain-SGD FedAvg arm's
TEMPERATURE = 0.1   # FedEntropy's T
FISHER_SAMPLES = 4  # blocks per client for FedFisher's Fisher
# the longer budget: does federation close the gap given more rounds? (1 layer, topic shards; 1: skipped)
LONG_FACTOR, LONG_ARMS, LONG_SHARD, LONG_SUFFIX = 3, ("central", "fedavg", "fedfisher"), "topic", "-long"
# every run keeps a constant rate to its end: one whose last evaluation is its best was still improving
SYNTHETIC_PLATEAU = plateau.Plateau("the final evaluation is not the run's best (a constant rate: a last-is-best run "
                                    "is still improving)", metric="val_ppl", direction="min", schedule="constant")


def synthetic_name(arm: str, layers: int, shard: str) -> str:
    """An arm of the synthetic grid as its runs are named less ``_s<seed>``: ``fedavg_L1_topic``,
    ``central_L2_synthetic``."""
    return f"{arm}_L{layers}_{'synthetic' if arm.startswith('central') else shard}"


LONG = tuple(synthetic_name(a + LONG_SUFFIX, 1, LONG_SHARD) for a in LONG_ARMS)  # central, FedAvg, FedFisher


def synthetic_study(plan: Sequence[tuple[str, str, list[str]]], seeds: Sequence[int]) -> study.Study:
    """The synthetic study, its arms run_grid.py's ``plan`` [(run name, script, flags)] at ``seeds``: each run of the
    first seed, less its seed; equal samples, ``SYNTHETIC_PLATEAU`` and the three families (module doc)."""
    arms = []
    for run, script, argv in plan:
        arm, seed = run.rsplit("_s", 1)
        if seed == str(seeds[0]):
            at = argv.index("--seed")
            arms.append(study.Arm(arm, f"mamba_fl.{script[:-3]}", tuple(argv[:at] + argv[at + 2:])))

    def against_fedavg(kinds: Sequence[str], family: str, layers=LAYERS, shards=SHARDS) -> list[study.Comparison]:
        return [study.Comparison(synthetic_name(a, L, s), synthetic_name("fedavg", L, s), family) for L in layers
                for s in shards for a in kinds]

    return study.Study(
        "synthetic", arms=tuple(arms), seeds=tuple(seeds), plateau=SYNTHETIC_PLATEAU, compute="equal samples",
        comparisons=(*against_fedavg(CENTRAL, "gap"), study.Comparison(LONG[0], LONG[1], "gap"),
                     *against_fedavg(AGGREGATORS, "aggregators"), study.Comparison(LONG[2], LONG[1], "aggregators"),
                     *against_fedavg(VARIANTS, "client optimizer", (1,), ("contiguous",))))


# ------------------------------------------------------------------------------------------------- real text
# --size small: the shrunk model the CPU grid runs; source: the source's (d_model 512, d_state 128, head dim 64: the
# scripts' defaults) on 256-token blocks of the GPT-2 tokenizer (--tokenizer), a GPU's work; its checkpoints (1.5 GB
# with 4 clients' AdamW moments) are written once a pass rather than at every evaluation (5 a pass)
SIZES = {"small": ["--d-model", "32", "--d-state", "16", "--head-dim", "16", "--sequence-length", "64",
                   "--vocab-size", "1024"],
         "source": ["--sequence-length", "256", "--checkpoint-every", "5"]}
FEDERATED = {  # arm -> (script, flags)
    "fedavg": ("fed_avg.py", []),
    "fedfisher": ("fed_fisher.py", ["--fisher-samples", "8"]),
    "fedfisher-local": ("fed_fisher.py", ["--fisher-method", "local", "--fisher-samples", "8"]),
    "fedentropy": ("fed_entropy.py", ["--entropy-blocks", "16"]),
    "fedavgm": ("fed_momentum.py", ["--momentum-form", "heavy-ball", "--server-momentum", "0.9"]),
}
# FedFisher --fisher-method local estimates the Fisher from pairs of consecutive local steps, so its clients take
# 2 steps of half the batch a round: the same blocks a round as every other arm, twice the sequential updates
LOCAL_UPDATES = {"fedfisher-local": 2}
SOURCE_ARMS = ("central", "central-b4", "fedavg", "fedfisher")  # the source's arms, in every headline setting
PAIRED = ("fedavg", "fedfisher")    # the source's claim: at 1 and 2 layers at PAIRED_SEEDS
PAIRED_SEEDS = (0, 1, 2, 3, 4)
PATIENCE = 5  # evaluations without a 1 % gain that stop a run: 5 of EVAL_EPOCHS 0.2, one pass
EVAL_EPOCHS, MAX_EPOCHS, BUDGET_EPOCHS = 0.2, 40.0, 4.0  # passes: between evaluations, the cap, equal compute

# the selection: one run per candidate, on validation
SELECTION_SEED, SELECTION_LAYERS, SELECTION_SHARD = 100, 1, "contiguous"
SELECT_AT, SELECT_EPOCHS, EXTEND = "plateau", 4.0, 2  # to the plateau rule (or a fixed length); edge extensions
# what the selection stage chooses, per arm: (flag, candidates); the second phase at FedAvg's chosen rate;
# FedFisher-local has no free setting: one candidate, for "the best other arm"
CHOICES = {"central": ("--lr", [3e-3, 1e-2, 3e-2]), "fedavg": ("--lr", [3e-3, 1e-2, 3e-2]),
           "fedentropy": ("--temperature", [0.1, 1.0, 10.0]), "fedavgm": ("--server-lr", [0.1, 0.3, 1.0]),
           "fedfisher-local": ("--fisher-method", ["local"])}
PHASES = (("central", "fedavg"), ("fedentropy", "fedavgm", "fedfisher-local"))
OTHERS = PHASES[1]  # the headline runs the best of them (on validation); --block all runs all three
BEST_OTHER = "best_other"  # selection.json's setting that names it (its candidates: OTHERS), beside one per arm


def below_unigram(summary: dict) -> bool:
    """A selection run that stayed above its unigram perplexity learned nothing worth choosing."""
    return summary["best_val_ppl"] < summary.get("unigram_ppl", 0)


def grid_of(arm: str, candidates: dict | None = None, extend: int = 0) -> study.Grid:
    """The selection of ``arm``: ``CHOICES``' flag at its candidates (``candidates[arm]`` once extended), the
    lowest best validation perplexity of the seed-``SELECTION_SEED`` run."""
    flag, values = CHOICES[arm][0], (candidates or {}).get(arm, CHOICES[arm][1])
    return study.Grid(flag, tuple(values), "best_val_ppl", "min", split="validation", extend=extend,
                      valid=below_unigram)


def other_grid() -> study.Grid:
    """The choice of the headline's other arm among ``OTHERS``, each scored by its own chosen candidate's best
    validation perplexity (ties: the earlier of ``OTHERS``). Its "flag" "arm" is no command-line flag: the
    candidates are arms, the one chosen runs in the headline."""
    return study.Grid("arm", OTHERS, "best_val_ppl", "min", split="validation")


def candidate_name(flag: str, value) -> str:
    """A selection run's name for one candidate (``select_<arm>_<this>``): ``lr0.01``, ``fisher-method-local``."""
    return f"{flag[2:]}{value:g}" if isinstance(value, float) else f"{flag[2:]}-{value}"


def criterion(args) -> str:
    """The selection's rule in words at real_grid.py's ``args``: selection.json's ``criterion``."""
    length = (f"to the plateau rule ({PATIENCE} evaluations without a 1 % gain, at most {args.max_epochs:g} passes)"
              if args.select_at == "plateau" else f"for {args.select_epochs:g} passes")
    return (f"the lowest best validation perplexity per token of one run per candidate (seed {SELECTION_SEED}, 1 "
            f"layer, run {length}), ties to the smaller value; a run that diverged or whose best stayed at or above "
            f"its unigram perplexity cannot win; a winner at the edge of its candidates adds the next value beyond it "
            f"at the same ratio, at most {args.extend} time(s); central's and FedAvg's learning rates first, then "
            f"{', '.join(OTHERS)} at FedAvg's rate; {BEST_OTHER}: the one of those whose chosen candidate scored "
            "lowest")


def selection_runs(args) -> dict:
    """What every selection run shared at real_grid.py's ``args``: selection.json's ``runs``."""
    plateau_ = args.select_at == "plateau"
    return {"seeds": [SELECTION_SEED], "layers": SELECTION_LAYERS, "size": args.size, "clients": args.clients,
            "shard": SELECTION_SHARD, "batch_size": args.batch_size, "eval_epochs": args.eval_epochs,
            "select_at": args.select_at,
            **({"max_epochs": args.max_epochs, "patience": PATIENCE} if plateau_ else {"epochs": args.select_epochs})}


# the reported runs
def reported_settings(block: str, clients: int) -> list[tuple[int, str, int, int]]:
    """The settings (layers, shard, clients, clients a round) of ``--block``: the headline at 1 and 2 layers,
    ``clients`` on contiguous shards; with "all" also topic shards, 16 clients (4 a round) and 4 layers after it."""
    settings = [(L, "contiguous", clients, clients) for L in (1, 2)]
    if block == "all":
        settings += [(1, "topic", clients, clients), (1, "contiguous", 16, 4), (4, "contiguous", 4, 4)]
    return settings


def reported_arms(layers: int, shard: str, k: int, clients: int, others: Sequence[str]) -> list[str]:
    """The arms of one setting (``k`` its clients; ``clients`` the headline's; ``others``: the headline's other
    arms): at 4 layers ``SOURCE_ARMS`` (depth: does federation keep up with central training?), where the clients
    differ from the headline's ``PAIRED``, in the headline every source arm and ``others``."""
    if layers == 4:
        return list(SOURCE_ARMS)
    if (shard, k) != ("contiguous", clients):
        return list(PAIRED)
    return [*SOURCE_ARMS, *others]


def paired(arm: str, layers: int) -> bool:
    """Whether ``arm`` runs at ``PAIRED_SEEDS`` (FedAvg and FedFisher at 1 and 2 layers) rather than ``SEEDS``."""
    return arm in PAIRED and layers != 4


def setting_of(layers: int, shard: str, clients: int, per_round: int) -> tuple[int, str, str]:
    """A setting as its runs' names give it: (1, "contiguous", "k4m4")."""
    return layers, shard, f"k{clients}m{per_round}"


HEADLINE = tuple(setting_of(*s) for s in reported_settings("headline", CLIENTS))  # 1 and 2 layers, 4 clients
SETTINGS = tuple(setting_of(*s) for s in reported_settings("all", CLIENTS))       # every setting of --block all
STAGES = ("plateau", "budget")  # at the plateau, at equal compute (BUDGET_EPOCHS)
# real_grid.py stops a run at a constant rate after a pass without a 1 % gain: a run whose best validation point is
# its last evaluation was stopped while still improving (not shown to be at a plateau)
REAL_PLATEAU = plateau.Plateau("the best validation perplexity is not the last evaluation", metric="val_ppl",
                               direction="min", schedule="constant")


def real_name(arm: str, setting: tuple) -> str:
    """An arm of one setting (``setting_of``), named as its runs are less ``_plateau_s<seed>``:
    ``fedavg_L1_contiguous_k4m4``."""
    layers, shard, clients = setting
    return f"{arm}_L{layers}_{shard}_{clients}"


def arm_script(arm: str) -> tuple[str, tuple[str, ...]]:
    """(module, its own flags) of a real-text arm."""
    script, flags = ("central.py", []) if arm.startswith("central") else FEDERATED[arm]
    return f"mamba_fl.{script[:-3]}", (*flags, *(("--batch-size", "64") if arm == "central-b4" else ()))


def setting_study(name: str, setting: tuple, arms: Sequence[str], seeds: Sequence[int]) -> study.Study:
    """One table as a study: ``arms`` of ``setting`` against FedAvg, at the plateau and at equal compute, each stage
    one Holm family (results_real.md's tables)."""
    return study.Study(name, arms=tuple(study.Arm(real_name(a, setting), *arm_script(a)) for a in arms),
                       seeds=tuple(seeds), plateau=REAL_PLATEAU, comparisons=tuple(
                           study.Comparison(real_name(a, setting), real_name("fedavg", setting), f"{setting}, {stage}",
                                            stage)
                           for stage in STAGES for a in arms if a != "fedavg"))


# FedFisher − FedAvg in every setting of the grid, at the plateau and at equal compute: one family, the one a
# conclusion across its tables needs
FISHER = study.Study(
    "fedfisher", arms=tuple(study.Arm(real_name(a, k), *arm_script(a)) for k in SETTINGS for a in PAIRED),
    seeds=PAIRED_SEEDS, comparisons=tuple(study.Comparison(real_name("fedfisher", k), real_name("fedavg", k), "grid",
                                                           stage) for k in SETTINGS for stage in STAGES))
