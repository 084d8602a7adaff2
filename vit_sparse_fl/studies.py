"""vit_sparse_fl's studies, declared once: the suite's arms and designs, seeds, the rate selection, budgets, plateau
rules and comparisons with their Holm families. ``run_all_experiments.py`` runs the suites (selection, then the
reported runs), ``report.py`` writes their tables, ``compare_budgets.py`` the budgets table, ``results.py`` the README
blocks; every one of them reads these names.

* **The ViT suite** (``VIT``; ``python vit_sparse_fl/run_all_experiments.py``): what federated fine-tuning of a
  pretrained tiny ViT (``BASE``: trained once on classes 50-99) costs under label skew, and whether a sparse mask
  beats dense FedAvg and a head-only probe. Arms (``vit_settings``): FedAvg IID from the base, from scratch and
  centralized at equal sample gradients; FedAvg at Nc = 1, 2, 5 classes per client; the local steps J = 8, 16 at
  R x J fixed on IID and Nc = 2; the probes (``PROBES``) and the five mask strategies (``STRATEGIES``) at sparsity
  0.9 and 0.5 on IID and Nc = 2, and the true-Fisher score's least-sensitive mask. Seeds 0..N-1 (``NUM_RUNS``).
  Selection (``SELECTION``, ``CRITERION``): each setting's rate from ``VIT_GRID`` by the best final validation
  accuracy of one run (seed ``SELECT_SEED``) at R / 4 rounds; a pick at the grid's edge is said, not extended.
  Budget: R = ``ROUNDS`` rounds after ``WARMUP`` head-only rounds, (R + W)·M·J·B sample gradients for every arm
  (``Design.sample_gradients``); committed at R = 192 and 768. Plateau: each run's own check (validation accuracy
  moved < 1 point since 80 % of the run; the tables count it); the README blocks judge R = 192 against the same
  settings at R = 768 (``PLATEAU``, ``LONGER``). Comparisons: every table of the suite is one Holm family
  (``table_study``): its rows against its reference (FedAvg IID; dense FedAvg of the shards), the mask tables
  (``mask_rows``, ``mask_study``) every row against dense FedAvg and the head-only probe in test accuracy and
  interference, matched on client steps (the other tables on sample gradients).
* **The text suite** (``TEXT``; ``run_all_experiments.py --text``): the masks' question on all-MiniLM-L6-v2 and AG
  News. Arms (``text_settings``): dense FedAvg, the probe (every encoder layer frozen) and ``TEXT_MASKS`` on IID,
  Nc = 2 and Nc = 1 shards. Seeds 0-4 and R = 24 (``TEXT_PRESET``; committed also at 12, 48 and 96). Selection: the
  rate of each arm family from its own grid (``TEXT_GRIDS``) at R / 2 rounds, a pick at the edge of the rates tried
  extended ``TEXT.edge_steps`` times. Comparisons: one Holm family per shard's table (as the mask tables above, equal
  steps), and the skew table (``SKEW_ARMS``, ``skew_study``): each arm's accuracy lost to skew and that loss minus
  dense FedAvg's, one family.
* **The budgets** (``compare_budgets.py``): the suites of one kind at several R side by side (``budget_study``):
  every setting against its ``reference`` at each budget (family "vs reference") and every setting's last budget
  step (family "last step"); a setting has settled when that step moves its mean by less than ``SETTLED`` point.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from common import cli, plateau, study
from vit_sparse_fl.options import MASK_STRATEGIES as STRATEGIES

SCRIPTS = {"centralized": "vit_sparse_fl.train_centralized", "fedavg": "vit_sparse_fl.train_federated",
           "sparse": "vit_sparse_fl.train_federated_sparse"}


@dataclasses.dataclass(frozen=True)
class Design:
    """What a suite fixes: task, federation, shards of the mask tables and selection budget."""
    name: str
    classes: int
    clients: int                   # K
    per_round: int                 # M
    local_steps: int               # J
    warmup: int                    # head warm-up rounds before the R rounds
    batch: int
    shards: dict[str, tuple[str, ...]]
    select_fraction: int           # selection runs: R / select_fraction rounds
    out_prefix: str
    edge_steps: int = 0            # more rates beyond a best rate at the edge of those tried (Grid.extend)

    def sample_gradients(self, rounds: int) -> int:
        """(R + W) rounds x M clients x J steps x B examples."""
        return (rounds + self.warmup) * self.per_round * self.local_steps * self.batch

    def shard_title(self, shard: str) -> str:
        return "IID" if shard == "iid" else f"Nc = {shard[2:]}"


NON_IID = ("--sharding", "non_iid", "--nc")
NUM_CLASSES, BATCH = 50, 16                        # the ViT's fine-tuning task: classes 0..49 of the embedded data
TASK = ["--quick", "--quiet", "--classes", "0", str(NUM_CLASSES), "--synthetic-per-class", "200", "100",
        "--max-train", "0", "--max-test", "2000", "--val-fraction", "0.1", "--batch-size", str(BATCH)]
BASE = ["--quick", "--quiet", "--classes", str(NUM_CLASSES), "100", "--synthetic-per-class", "200", "100",
        "--max-train", "0", "--max-test", "0", "--total-steps", "2000", "--batch-size", "64",
        "--warmup-epochs", "1", "--patience", "0"]
VIT = Design("vit", NUM_CLASSES, clients=50, per_round=5, local_steps=4, warmup=4, batch=BATCH,
             shards={"iid": (), "nc2": (*NON_IID, "2")}, select_fraction=4, out_prefix="runs/vit_suite_R")
EVAL_EVERY = 6
PROBES = {"head": ("2", "probe: head + final norm"), "last": ("1", "probe: head + final norm + last block")}
# the ViT suite's cells and budget (the flags' defaults): reported seeds 0..NUM_RUNS-1, R rounds, the J and Nc
# sweeps and the mask tables' sparsities
NUM_RUNS, ROUNDS, SELECT_SEED = 3, 192, 100
J_VALUES, J_SHARDS, NC_VALUES, SPARSITIES = (4, 8, 16), ("iid", "nc2"), (1, 2, 5), (0.9, 0.5)
# --text: all-MiniLM-L6-v2 on AG News (4 classes, 32 tokens), 5 of 20 clients per round
TEXT_TASK = ["--quiet", "--arch", "encoder", "--data", "ag_news", "--max-length", "32", "--max-test", "1000",
             "--val-fraction", "0.06", "--batch-size", "8", "--eval-batch-size", "100", "--interference-images", "50"]
TEXT = Design("ag_news", 4, clients=20, per_round=5, local_steps=4, warmup=2, batch=8,
              shards={"iid": (), "nc2": (*NON_IID, "2"), "nc1": (*NON_IID, "1")}, select_fraction=2,
              out_prefix="runs/text_suite_R", edge_steps=2)
TEXT_MASKS = [(0.9, s) for s in ("least_sensitive", "most_sensitive", "random", "lowest_magnitude")] + \
             [(0.5, s) for s in ("least_sensitive", "random")]
TEXT_PRESET = dict(rounds=24, num_runs=5)
VIT_GRID = [0.03, 0.1, 0.3, 1.0]
# --text: a pretrained transformer wants rates 10-100x below the head alone's, so each arm family has its own
# grid; the masks' reaches down to dense's (a mask of high-score coordinates trains like dense)
TEXT_GRIDS = {"fedavg": [0.003, 0.01, 0.03, 0.1], "sparse": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
              "probe": [0.1, 0.3, 1.0, 3.0]}
# how a setting's rate is chosen (study.choose): the best final validation accuracy of its one selection run (seed
# --select-seed, validation examples from the training classes' training split), ties to the smaller rate; a rate
# at the edge of those tried adds one beyond it (to one significant digit), Design.edge_steps times
SELECTION = study.Grid("--lr", tuple(VIT_GRID), "final_val_accuracy", "max", split="validation", digits=1)
CRITERION = ("best final validation accuracy of the selection run (ties: the smaller rate); validation images from "
             "the training classes' training split")
# the ViT suite's names, which its settings and the tests read
J, WARMUP, M, SHARDS = VIT.local_steps, VIT.warmup, VIT.per_round, VIT.shards


def design(args) -> Design:
    """The suite's design: ``TEXT`` under --text, else ``VIT``."""
    return TEXT if args.text else VIT


# ---------------------------------------------------------------------------------------------- the arms
def federation(d: Design) -> list[str]:
    """The federation flags of a design: K clients, M of them a round, the interference window."""
    return ["--num-clients", str(d.clients), "--participation-rate", f"{d.per_round / d.clients:g}",
            "--interference-window", "0.2"]


def text_names(shard: str) -> list[str]:
    """--text: the settings of one shard: dense FedAvg, the head-only probe, then the masks of ``TEXT_MASKS``."""
    return [f"fedavg_{shard}", f"probe_{shard}_head", *(f"sparse_{shard}_s{sp:g}_{s}" for sp, s in TEXT_MASKS)]


def text_settings(args, rounds: int) -> list[tuple[str, str, list[str]]]:
    """--text: ``text_names`` of every shard of ``TEXT`` with their scripts and flags. The probe freezes every
    encoder layer, so the encoder's depth is read from its config.json; --data-dir is checked to hold test.csv, so
    a wrong folder ends the suite in one line before any run."""
    from vit_sparse_fl import text
    depth = json.loads((text.model_folder(args.weights) / "config.json").read_text())["num_hidden_layers"]
    # --data-dir, else the AG News folder of a shared/data folder next to the repository
    data = Path(args.data_dir) if args.data_dir else Path(__file__).resolve().parents[2] / "shared/data/ag_news_csv"
    cli.check((data / "test.csv").is_file(), f"--text: {data} holds no test.csv; pass --data-dir, the folder of the "
                                             "AG News CSV files")
    fed = [*TEXT_TASK, *federation(TEXT), "--data-dir", str(data), "--weights", args.weights,
           "--head-warmup", str(TEXT.warmup), "--local-steps", str(TEXT.local_steps), "--rounds", str(rounds),
           "--eval-every", str(max(1, rounds // 6))]
    out = []
    for shard, flags_ in TEXT.shards.items():
        dense, probe, *masks = text_names(shard)
        out += [(dense, "fedavg", [*fed, *flags_]), (probe, "fedavg", [*fed, *flags_, "--freeze-layers", str(depth)])]
        out += [(name, "sparse", [*fed, *flags_, "--mask-strategy", strategy, "--sparsity-ratio", f"{sp:g}",
                                  "--fisher-score", "talos", "--calibration-rounds", "2"])
                for name, (sp, strategy) in zip(masks, TEXT_MASKS)]
    return out


def settings(args, base: str, rounds: int, every: bool = False) -> list[tuple[str, str, list[str]]]:
    """(name, script, argv without --lr and --seed) of the settings of --only (``every``: all), ``rounds`` rounds."""
    out = text_settings(args, rounds) if args.text else vit_settings(args, base, rounds)
    return [s for s in out if every or not args.only or s[0] in args.only]


def vit_settings(args, base: str, rounds: int) -> list[tuple[str, str, list[str]]]:
    """The ViT suite's settings (``settings``), fine-tuning ``base``, in the plan's order."""
    fed = [*TASK, *federation(VIT)]

    def fedavg(weights: str) -> list[str]:
        return [*fed, "--head-warmup", str(WARMUP), "--weights", weights, "--local-steps", str(J),
                "--rounds", str(rounds), "--eval-every", str(EVAL_EVERY)]

    def masked(shard: str, sp: float, strategy: str, score: str = "talos") -> tuple[str, str, list[str]]:
        return (f"sparse_{shard}_s{sp:g}_{strategy}" + ("_fisher" if score == "fisher" else ""), "sparse",
                [*fedavg(base), *SHARDS[shard], "--mask-strategy", strategy, "--sparsity-ratio", f"{sp:g}",
                 "--fisher-score", score, "--calibration-rounds", "4"])

    out = [("fedavg_iid", "fedavg", fedavg(base)), ("fedavg_iid_scratch", "fedavg", fedavg("none")),
           ("centralized", "centralized", [*TASK, "--weights", base, "--patience", "0", "--warmup-epochs", "0",
                                           "--weight-decay", "1e-4", "--keep-best", "1",
                                           "--total-steps", str((rounds + WARMUP) * M * J)])]
    out += [(f"fedavg_nc{nc}", "fedavg", [*fedavg(base), "--sharding", "non_iid", "--nc", str(nc)])
            for nc in args.nc_values]
    out += [(f"fedavg_{shard}_J{j}", "fedavg",
             [*fed, *SHARDS[shard], "--weights", base, "--local-steps", str(j),
              "--rounds", str(max(1, round(rounds * J / j))), "--head-warmup", str(max(1, round(WARMUP * J / j))),
              "--eval-every", str(max(1, round(EVAL_EVERY * J / j)))])
            for shard in args.j_shards for j in args.j_values if j != J]
    out += [(f"probe_{shard}_{kind}", "fedavg", [*fedavg(base), *SHARDS[shard], "--freeze-layers", frozen])
            for shard in SHARDS for kind, (frozen, _) in PROBES.items()]
    out += [masked(shard, sp, strategy) for shard in SHARDS for sp in args.sparsities for strategy in STRATEGIES]
    return [*out, masked("nc2", args.sparsities[0], "least_sensitive", "fisher")]


def script_of(setting: str) -> str:
    """The script (module) a setting runs."""
    return SCRIPTS["centralized" if setting == "centralized" else "sparse" if setting.startswith("sparse")
                   else "fedavg"]


# ---------------------------------------------------------------------------------------------- the selection
def lr_grid(args, setting: str) -> list[float]:
    """The rates the selection stage tries for ``setting``: --lr-grid, else the suite's default."""
    return args.lr_grid or (TEXT_GRIDS[setting.split("_")[0]] if args.text else VIT_GRID)


def selection_grid(args, setting: str) -> study.Grid:
    """``setting``'s selection: ``SELECTION`` over its rates (``lr_grid``), extended ``Design.edge_steps`` times."""
    return dataclasses.replace(SELECTION, values=tuple(lr_grid(args, setting)), extend=design(args).edge_steps)


def study_name(args) -> str:
    """The suite as its selection.json names it: 'vit_sparse_fl vit_suite_R192' (its default out-dir's name)."""
    return f"vit_sparse_fl {Path(design(args).out_prefix).name}{args.rounds}"


def select_rounds(args) -> int:
    """The selection runs' rounds: R / ``Design.select_fraction``."""
    return max(1, args.rounds // design(args).select_fraction)


# ---------------------------------------------------------------------------------------------- the comparisons
def table_study(name: str, keys: list[str], refs: list[str], metrics: tuple[str, ...], compute: str,
                seeds: tuple[int, ...]) -> study.Study:
    """One table of the suite as a study: every row ``keys`` against every reference ``refs`` (rows themselves) in
    every metric, one Holm family; a reference against a later reference is counted once, in the later one's row
    (the earlier one's points to it). ``compute``: what the table's arms are matched on (``study.COMPUTE``)."""
    def mirror(key: str, ref: str) -> bool:
        return key in refs and refs.index(key) < refs.index(ref)

    return study.Study(name, arms=tuple(study.Arm(k, script_of(k)) for k in keys), seeds=seeds, compute=compute,
                       comparisons=tuple(study.Comparison(k, ref, name, m) for k in keys for ref in refs
                                         for m in metrics if k != ref and not mirror(k, ref)))


def mask_rows(shard: str, sp: float, first: bool) -> list[tuple[str, str]]:
    """(setting, label) of a ViT mask table: dense FedAvg, the probes, every strategy; the true-Fisher score's mask
    in the first sparsity's Nc = 2 table (``first``)."""
    rows = [(f"fedavg_{shard}", f"dense FedAvg ({VIT.shard_title(shard)})")]
    rows += [(f"probe_{shard}_{kind}", label) for kind, (_, label) in PROBES.items()]
    rows += [(f"sparse_{shard}_s{sp:g}_{s}", s + (" (TaLoS score)" if "sensitive" in s else "")) for s in STRATEGIES]
    if first and shard == "nc2":
        rows.append((f"sparse_{shard}_s{sp:g}_least_sensitive_fisher", "least_sensitive (true-Fisher score)"))
    return rows


# every arm's rate decays by a cosine, so its last evaluations are flat by construction: a run is judged against
# the same setting at 4x the rounds (r768_rates/runs, its rate chosen again there), within half the seeds' sd of
# the final validation accuracy (the selection split's noise)
PLATEAU = plateau.Plateau("4x the rounds raise the final validation accuracy by at most 0.5 sd of the seeds",
                          "R768", tolerance=0.5, metric="val_accuracy", value="final_val_accuracy", direction="max",
                          schedule="decayed")
LONGER = {192: "r768_rates/runs"}  # a budget's second budget: the committed folder of its longer runs


def mask_study(rounds: int, shard: str, sparsity: float) -> study.Study:
    """One mask table of the suite at R = ``rounds`` as its table declares it (``table_study``): each row against
    dense FedAvg and the head-only probe in test accuracy and interference, one Holm family; equal steps (rounds
    times local steps); with the plateau's second budget, R = 768."""
    rows = [key for key, _ in mask_rows(shard, sparsity, sparsity == 0.9)]
    s = table_study(f"masks_R{rounds}_{shard}_s{sparsity:g}", rows, [f"fedavg_{shard}", f"probe_{shard}_head"],
                    ("test_accuracy", "interference"), "equal steps", (0, 1, 2))
    return dataclasses.replace(s, budgets={f"R{rounds}": (), "R768": ("--rounds", "768")}, plateau=PLATEAU)


SKEW_ARMS = {"dense FedAvg": "fedavg_{}", "probe: head": "probe_{}_head",
             **{f"{s}, s = {sp:g}": f"sparse_{{}}_s{sp:g}_{s}" for sp, s in TEXT_MASKS}}


def skew_study(rows: list[str], d: Design, seeds: tuple[int, ...]) -> study.Study:
    """The skew table as a study: per arm of ``rows`` (``SKEW_ARMS``' rows), its accuracy on each skewed shard of
    ``d`` against its own on IID shards (metric "test_accuracy") and, but for dense FedAvg, that loss against dense
    FedAvg's (metric "skew"), one Holm family."""
    skewed = [shard for shard in d.shards if shard != "iid"]
    iid = {name.format(shard): name.format("iid") for name in SKEW_ARMS.values() for shard in d.shards}
    return study.Study("skew", arms=tuple(study.Arm(k, script_of(k)) for k in iid), seeds=seeds, comparisons=tuple(
        c for shard in skewed for arm in rows for c in (
            study.Comparison(SKEW_ARMS[arm].format(shard), SKEW_ARMS[arm].format("iid"), "skew", "test_accuracy"),
            *([study.Comparison(SKEW_ARMS[arm].format(shard), f"fedavg_{shard}", "skew", "skew")]
              if arm != "dense FedAvg" else []))))


# ---------------------------------------------------------------------------------------------- the budgets
SETTLED = 1.0  # points: a budget step moving a setting's mean less than this has settled


def reference(setting: str) -> str | None:
    """The setting each one is compared with at the same budget (None: it is a reference itself)."""
    if setting == "fedavg_iid":
        return None
    if m := re.fullmatch(r"fedavg_(iid|nc2)_J\d+|(?:sparse|probe)_(iid|nc\d+)_.*", setting):
        return f"fedavg_{m.group(1) or m.group(2)}"
    return "fedavg_iid"


def at(setting: str, rounds: int) -> str:
    """The arm of a setting at a budget: 'fedavg_iid@192'."""
    return f"{setting}@{rounds}"


def budget_study(suites: dict[int, dict[str, dict]], order: list[str]) -> study.Study:
    """The budgets table's comparisons: every setting at every budget against its reference there (``reference``),
    one Holm family; every setting's last budget step (its largest budget against the one before), another: a
    conclusion about what still moves spans the settings. An arm is a setting at a budget (``at``); ``suites``
    {rounds: {setting: {seed: value}}} says which ran."""
    budgets = list(suites)
    have = {setting: [r for r in budgets if setting in suites[r]] for setting in order}
    vs = [study.Comparison(at(setting, r), at(reference(setting), r), "vs reference") for setting in order
          for r in have[setting] if reference(setting) and reference(setting) in suites[r]]
    steps = [study.Comparison(at(setting, have[setting][-1]), at(setting, have[setting][-2]), "last step")
             for setting in order if len(have[setting]) >= 2]
    names = dict.fromkeys(c for cmp in (*vs, *steps) for c in (cmp.arm, cmp.reference))
    names |= dict.fromkeys(at(setting, r) for setting in order for r in have[setting])
    return study.Study("budgets", arms=tuple(study.Arm(a, script_of(a.rsplit("@", 1)[0])) for a in names),
                       seeds=tuple(sorted({s for table in suites.values() for v in table.values() for s in v})),
                       comparisons=(*vs, *steps))
