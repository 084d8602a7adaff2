"""The whole suite, pretrain-then-federate: one cached base, a learning rate per setting chosen on validation,
then every setting for every seed, into one results table (mean ± sample sd, paired differences with 95%
intervals, Holm-corrected) and the figures.

    python vit_sparse_fl/run_all_experiments.py                       # runs/vit_suite_R192, 2 jobs of 1 thread
    python vit_sparse_fl/run_all_experiments.py --table-only          # table and figures from finished runs
    python vit_sparse_fl/run_all_experiments.py --smoke --out-dir /tmp/vit_smoke   # minutes: tiny budget
    python vit_sparse_fl/run_all_experiments.py --text              # MiniLM on AG News: runs/text_suite_R24

The design (``--text``: all-MiniLM-L6-v2 on AG News, no pretraining stage; the selection stage; the reported
seeds, ordered seed by seed) is vit_sparse_fl/README.md's "The suite"; the numbers are the constants below. Runs
go through ``common.jobs`` (finished runs skipped, interrupted ones resumed; logs in <out-dir>/logs);
<out-dir>/results.md and results.json are rewritten from the run directories on every call.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from common import cli, flags, jobs, study, study_report
from common import runs as R
from common.checkpoint import atomic_write_json, atomic_write_text
from vit_sparse_fl import pretrain
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
    edge_steps: int = 0            # more rates beyond a best rate at the edge of those tried (edge_rates)

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
# how a setting's rate is chosen (choose): the best final validation accuracy of its one selection run (seed
# --select-seed, validation examples from the training classes' training split), ties to the smaller rate; a rate
# at the edge of those tried adds one beyond it (to one significant digit), Design.edge_steps times
SELECTION = study.Grid("--lr", tuple(VIT_GRID), "final_val_accuracy", "max", split="validation", digits=1)
CRITERION = ("best final validation accuracy of the selection run (ties: the smaller rate); validation images from "
             "the training classes' training split")
# the ViT suite's names, which its settings and the tests read
J, WARMUP, M, SHARDS = VIT.local_steps, VIT.warmup, VIT.per_round, VIT.shards


def design(args) -> Design:
    return TEXT if args.text else VIT


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                           epilog=cli.examples(__doc__))
    parser.add_argument("--text", action="store_true",
                        help="the mask tables on real text instead: --weights (all-MiniLM-L6-v2) fine-tuned on "
                             "the AG News CSV files of --data-dir; presets "
                             + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in TEXT_PRESET.items()))
    parser.presets = {"text": TEXT_PRESET}
    parser.add_argument("--weights", default="minilm",
                        help="--text: the encoder, 'minilm' (the 'pretrained' extra) or a Hugging Face encoder folder")
    parser.add_argument("--data-dir", default=None,
                        help="--text: the folder holding AG News test.csv (default: shared/data/ag_news_csv "
                             "next to the repository)")
    parser.add_argument("--out-dir", type=flags.FOLDER, default=None,
                        help="parent folder of every run directory (default runs/vit_suite_R<rounds>, "
                             "--text: runs/text_suite_R<rounds>)")
    parser.add_argument("--num-runs", type=flags.POSITIVE_INT, default=3, help="seeds 0..N-1 per setting")
    parser.add_argument("--rounds", type=int, default=192,
                        help="R: rounds of the J = 4 runs after the warm-up (a multiple of 4, for the J sweep)")
    parser.add_argument("--j-values", type=flags.POSITIVE_INT, nargs="+", default=[4, 8, 16],
                        help="J sweep at R * J fixed (J = 4 is the FedAvg run of the shards)")
    parser.add_argument("--j-shards", nargs="+", default=["iid", "nc2"], choices=["iid", "nc2"],
                        help="shards of the J sweep: IID, and Nc = 2 (where local steps cause client drift)")
    parser.add_argument("--nc-values", type=flags.Number(int, 1, NUM_CLASSES), nargs="+", default=[1, 2, 5],
                        help=f"Nc sweep (classes per client, at most the task's {NUM_CLASSES})")
    parser.add_argument("--sparsities", type=flags.Number(float, 0, 1, low_open=True, high_open=True), nargs="+",
                        default=[0.9, 0.5],
                        help="sparsity ratios of the mask-strategy comparison (IID and Nc = 2 shards)")
    parser.add_argument("--lr-grid", type=flags.POSITIVE, nargs="+", default=None,
                        help=f"rates the selection stage tries for every setting (default: {VIT_GRID}; --text: "
                             f"per arm family, {TEXT_GRIDS})")
    parser.add_argument("--select-seed", type=flags.SEED, default=100,
                        help="seed of the selection runs (apart from the reported seeds 0..N-1)")
    parser.add_argument("--lr", type=flags.POSITIVE, default=None,
                        help="skip the selection stage: this rate for every setting")
    parser.add_argument("--only", nargs="+", default=None, metavar="SETTING",
                        help="run only these settings (e.g. fedavg_iid fedavg_nc2 sparse_nc2_s0.9_random); the "
                             "table shows the others as not run")
    parser.add_argument("--jobs", type=flags.POSITIVE_INT, default=2, help="runs at a time (worker processes)")
    parser.add_argument("--threads", type=flags.POSITIVE_INT, default=1, help="torch threads per worker")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny budget (base 40 steps, 4 rounds, 1 seed) to check the pipeline in minutes")
    parser.add_argument("--table-only", action="store_true", help="no training: table and figures from the runs")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    return parser


# ---------------------------------------------------------------------------------------------- the grid
def out_dir(args) -> Path:
    """--out-dir, else runs/vit_suite_R<rounds> (a run's name does not carry its rounds)."""
    return Path(args.out_dir or f"{design(args).out_prefix}{args.rounds}")


def federation(d: Design) -> list[str]:
    return ["--num-clients", str(d.clients), "--participation-rate", f"{d.per_round / d.clients:g}",
            "--interference-window", "0.2"]


def text_names(shard: str) -> list[str]:
    """--text: the settings of one shard: dense FedAvg, the head-only probe, then the masks of ``TEXT_MASKS``."""
    return [f"fedavg_{shard}", f"probe_{shard}_head", *(f"sparse_{shard}_s{sp:g}_{s}" for sp, s in TEXT_MASKS)]


def text_settings(args, rounds: int) -> list[tuple[str, str, list[str]]]:
    """--text: ``text_names`` of every shard of ``TEXT`` with their scripts and flags."""
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


def lr_grid(args, setting: str) -> list[float]:
    """The rates the selection stage tries for ``setting``: --lr-grid, else the suite's default."""
    return args.lr_grid or (TEXT_GRIDS[setting.split("_")[0]] if args.text else VIT_GRID)


def study_name(args) -> str:
    """The suite as its selection.json names it: 'vit_sparse_fl vit_suite_R192' (its default out-dir's name)."""
    return f"vit_sparse_fl {Path(design(args).out_prefix).name}{args.rounds}"


def select_rounds(args) -> int:
    return max(1, args.rounds // design(args).select_fraction)


def plan(args, base: str, rates: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> list[dict]:
    """Every run: {name, setting, script, argv, seed, lr}. ``rates`` None: the selection runs (every rate of
    --lr-grid, or ``extra``'s one rate per setting); else the reported runs at each setting's rate, seed-major."""
    def run(name: str, setting: str, script: str, argv: list[str], seed: int, lr: float) -> dict:
        return {"name": name, "setting": setting, "script": script, "seed": seed, "lr": lr,
                "argv": [*argv, "--lr", f"{lr:g}", "--seed", str(seed)]}

    if rates is None:
        seed = args.select_seed
        return [run(f"{name}_lr{lr:g}_seed{seed}", name, script, argv, seed, lr)
                for name, script, argv in settings(args, base, select_rounds(args))
                for lr in (lr_grid(args, name) if extra is None else [extra[name]] if name in extra else [])]
    return [run(f"{name}_seed{seed}", name, script, argv, seed, rates[name])  # the rate is in its args.json
            for seed in range(args.num_runs) for name, script, argv in settings(args, base, args.rounds)]


def check_runs(args, out: Path, base: str, rates: dict[str, float] | None) -> None:
    """Every run of the suite checked by its script before the first one starts (``jobs.check_plan``): the
    selection runs and the reported runs at each rate the selection may choose (``rates``: --lr's, no selection)."""
    names = [name for name, _, _ in settings(args, base, args.rounds)]
    picks = [rates] if rates else [{n: lr_grid(args, n)[min(i, len(lr_grid(args, n)) - 1)] for n in names}
                                   for i in range(max(len(lr_grid(args, n)) for n in names))]
    runs = ([] if rates else plan(args, base)) + [r for pick in picks for r in plan(args, base, pick)]
    jobs.check_plan(jobs_of(None, runs, out), f"{design(args).name} suite")


def choose(args, out: Path, base: str) -> dict[str, float]:
    """{setting: rate} from the selection runs (``SELECTION``'s rule: a diverged or missing run is never chosen); every
    rate's score, the choice, its edge and the rates tried beyond the setting's grid in <out>/selection.json
    (``study.write_selection``), keeping the choices of settings outside this call's plan."""
    choices = {}
    for name, _, _ in settings(args, base, select_rounds(args)):   # every rate tried: the grid's and the edges'
        summaries = {}
        for folder in (out / "selection").glob(f"{name}_lr*_seed{args.select_seed}"):
            f = folder / "summary.json"
            summaries[float(folder.name[len(name) + 3:-len(f"_seed{args.select_seed}")])] = \
                json.loads(f.read_text()) if f.is_file() else None
        if not summaries:
            continue
        summaries = dict(sorted(summaries.items()))
        grid = dataclasses.replace(SELECTION, values=tuple(lr_grid(args, name)))
        why = {lr: s["status"] for lr, s in summaries.items() if s and s.get("status", "complete") != "complete"}
        choices[name] = study.choice_record(grid, grid.pick({lr: [s] for lr, s in summaries.items()}),
                                            extended=[lr for lr in summaries if lr not in grid.values], why=why)
    record = study.write_selection(
        out / "selection.json", study_name(args), CRITERION, choices, keep=True,
        rounds=select_rounds(args), seeds=[args.select_seed],
        grid=args.lr_grid or (TEXT_GRIDS if args.text else VIT_GRID))
    return {name: rate for name, rate in study.chosen(record).items() if rate is not None}


def edge_rates(args, path: Path) -> dict[str, float]:
    """{setting of the plan: the next rate to try} where selection.json's choice is the smallest or largest rate
    tried (diverged counts): its "beyond", one step past it at the ratio to its neighbour, to one significant digit
    (``SELECTION.digits``, ``study.beyond_edge``)."""
    choices = study.read_selection(path)["choices"] if path.is_file() else {}
    beyond = {name: choices[name]["beyond"] for name, _, _ in settings(args, "", select_rounds(args))
              if name in choices}
    return {name: lr for name, lr in beyond.items() if lr is not None}


def smoke(args) -> None:
    """--smoke: shrink every budget so the pipeline runs in minutes (numbers meaningless)."""
    global BASE, TASK, TEXT_TASK
    BASE = [{"2000": "40", "1": "0"}.get(a, a) for a in BASE]
    TASK = [*TASK, "--max-train", "1000", "--max-test", "500"]
    TEXT_TASK = [*TEXT_TASK, "--max-train", "400", "--max-test", "200"]
    args.rounds, args.num_runs = 4, 1


# ---------------------------------------------------------------------------------------------- running
def base_job_of(out: Path) -> jobs.Job:
    """The pretrained base (``pretrain.py``), done when base.pt exists at its settings' cache key."""
    argv = [*BASE, "--cache-dir", str(out / "base_cache")]
    key = pretrain.cache_key(pretrain.base_settings(argv)[1])
    return jobs.Job("base", "vit_sparse_fl.pretrain", argv, output=out / "base_cache" / key / "base.pt",
                    label="pretrained base")


def jobs_of(base: jobs.Job | None, runs: list[dict], folder: Path) -> list[jobs.Job]:
    """The base (none for --text), then every run (those fine-tuning the base wait for it)."""
    return ([base] if base else []) + [jobs.Job(run["name"], SCRIPTS[run["script"]],
                                                [*run["argv"], "--out-dir", str(folder), "--run-name", run["name"]],
                                                after=("base",) if base and str(base.output) in run["argv"] else ())
                                       for run in runs]


# ---------------------------------------------------------------------------------------------- table
def setting_names(args) -> list[str]:
    """Every setting of the suite, in the plan's order (no file read: the table needs only the names)."""
    if args.text:
        return [name for shard in TEXT.shards for name in text_names(shard)]
    return [name for name, _, _ in vit_settings(args, "", args.rounds)]


def load_settings(args, out: Path, base: str) -> dict[str, list[dict]]:
    """{setting: [loaded finished reported run, ...]}."""
    groups: dict[str, list[dict]] = {}
    for seed in range(args.num_runs):
        for name in setting_names(args):   # --only limits what trains, not the table
            path = out / f"{name}_seed{seed}"
            if (path / "summary.json").is_file():
                groups.setdefault(name, []).append(R.load_run(path))
    return groups


def pct(runs: list[dict], key: str) -> dict:
    """{seed: 100 * summary[key]}"""
    return {s: 100 * v for s, v in R.by_seed(runs, key).items()}


def plateau(runs: list[dict]) -> str:
    return f"{sum(bool(r['summary'].get('plateau_reached')) for r in runs)}/{len(runs)}" if runs else "–"


def rate(runs: list[dict]) -> str:
    """The learning rate(s) of a cell's runs."""
    return "/".join(sorted({f"{r['args']['lr']:g}" for r in runs})) or "–"


def compute(runs: list[dict]) -> str:
    """Sample gradients of a cell, the mask calibration's per-example gradients included."""
    total = {r["summary"].get("sample_gradients", 0) + r["summary"].get("calibration_sample_gradients", 0)
             for r in runs}
    return "/".join(f"{t:,}" for t in sorted(total)) or "–"


def spent(groups: dict[str, list[dict]], matched: str):
    """spent(setting, metric) -> {seed: compute} in what a table's arms are matched on (``matched``, one of
    ``study.COMPUTE``): client steps (rounds times local steps), or sample gradients with the calibration's."""
    def amount(s: dict) -> float | None:
        if matched == "equal steps":
            return s["rounds_done"] * s["local_steps"] if "rounds_done" in s and "local_steps" in s else None
        return s["sample_gradients"] + s.get("calibration_sample_gradients", 0) if "sample_gradients" in s else None

    return lambda key, _: {r["args"]["seed"]: a for r in groups.get(key, []) if (a := amount(r["summary"])) is not None}


def rate_notes(selection: dict):
    """notes(setting, metric) -> ['rate at the high edge of its grid'] where the suite's selection (a selection.json,
    ``study.read_selection``; {} none) chose the smallest or largest rate it tried; [] inside the grid or not
    selected."""
    def of(key: str, _: str = "") -> list[str]:
        choice = selection.get("choices", {}).get(key)
        if choice is None or choice["chosen"] is None:
            return []
        edge = study_report.edge_note(choice["scores"], choice["chosen"], "rate")
        return [edge] if edge else []
    return of


def script_of(setting: str) -> str:
    return SCRIPTS["centralized" if setting == "centralized" else "sparse" if setting.startswith("sparse")
                   else "fedavg"]


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


SKEW_ARMS = {"dense FedAvg": "fedavg_{}", "probe: head": "probe_{}_head",
             **{f"{s}, s = {sp:g}": f"sparse_{{}}_s{sp:g}_{s}" for sp, s in TEXT_MASKS}}


def skew_study(g: dict[str, list[dict]], d: Design, seeds: tuple[int, ...]):
    """(study, values, rows) of the skew table: per arm (``SKEW_ARMS``' rows that ran on IID and a skewed shard),
    accuracy on each skewed shard minus on IID (paired by seed) and that minus dense's, one Holm family; values(key,
    metric) -> {seed: value}, metric "skew" the accuracy lost to skew. None when no arm ran on both."""
    skewed = [shard for shard in d.shards if shard != "iid"]
    rows = [arm for arm, name in SKEW_ARMS.items() if g.get(name.format("iid")) and any(g.get(name.format(shard))
                                                                                     for shard in skewed)]
    if not rows:
        return None
    iid = {name.format(shard): name.format("iid") for name in SKEW_ARMS.values() for shard in d.shards}

    def values(key: str, metric: str) -> dict:   # "skew": accuracy minus the same arm's on IID shards, by seed
        acc, ref = pct(g.get(key, []), "test_accuracy"), pct(g.get(iid[key], []), "test_accuracy")
        return acc if metric == "test_accuracy" else {seed: v - ref[seed] for seed, v in acc.items() if seed in ref}

    s = study.Study("skew", arms=tuple(study.Arm(k, script_of(k)) for k in iid), seeds=seeds, comparisons=tuple(
        c for shard in skewed for arm in rows for c in (
            study.Comparison(SKEW_ARMS[arm].format(shard), SKEW_ARMS[arm].format("iid"), "skew", "test_accuracy"),
            *([study.Comparison(SKEW_ARMS[arm].format(shard), f"fedavg_{shard}", "skew", "skew")]
              if arm != "dense FedAvg" else []))))
    return s, values, rows


def skew_table(g: dict[str, list[dict]], d: Design, seeds: tuple[int, ...]) -> list[str]:
    """``skew_study``'s table: per arm and skewed shard, the accuracy lost to skew and that minus dense's."""
    found = skew_study(g, d, seeds)
    if found is None:
        return []
    s, values, rows = found
    columns = [study_report.Text("arm", str)]
    for shard in (shard for shard in d.shards if shard != "iid"):
        at = lambda arm, shard=shard: SKEW_ARMS[arm].format(shard)  # noqa: E731
        columns += [study_report.Delta(f"lost to skew, {d.shard_title(shard)}", "test_accuracy", lambda arm: SKEW_ARMS[
                        arm].format("iid"), of=at),
                    study_report.Delta(f"minus dense's, {d.shard_title(shard)}", "skew", f"fedavg_{shard}", of=at)]
    return ["**Accuracy lost to skew: test accuracy on the skewed shards minus on IID shards (points, paired by "
            "seed); minus dense's: that loss minus dense FedAvg's (positive: the arm loses less); Holm over the "
            "table**", "", *study_report.table(s, values, columns, rows), ""]


def make_table(args, out: Path, base: str) -> tuple[str, dict]:
    g = load_settings(args, out, base)
    lines, record, seeds = [], {}, tuple(range(args.num_runs))
    path = out / "selection.json"
    notes = rate_notes(study.read_selection(path) if path.is_file() else {})

    def section(title: str, refs: list[tuple[str, str]], rows: list[tuple[str, str]], interference: bool = False,
                matched: str = "equal samples"):
        """One table: a Δ column per reference, every difference of the table in one Holm family."""
        metrics = ("test_accuracy", "interference") if interference else ("test_accuracy",)
        names = dict(rows)
        s = table_study(title, list(names), [ref for ref, _ in refs], metrics, matched, seeds)
        runs = lambda key: g.get(key, [])  # noqa: E731
        columns = [study_report.Text("setting", names.get), study_report.Text("lr", lambda k: rate(runs(k))),
                   study_report.Text("n", lambda k: len(runs(k))),
                   study_report.Value("test accuracy (%)", "test_accuracy"),
                   *(study_report.Delta(f"Δ vs {label}", "test_accuracy", ref) for ref, label in refs),
                   study_report.Text("plateau", lambda k: plateau(runs(k))),
                   study_report.Text("sample gradients", lambda k: compute(runs(k)))]
        if interference:
            columns += [study_report.Value("interference (points)", "interference"),
                        *(study_report.Delta(f"Δ interference vs {label}", "interference", ref) for ref, label in refs)]
        lines.extend([f"**{title}**", "", *study_report.table(s, lambda key, m: pct(runs(key), m), columns,
                                                               notes=notes, spent=spent(g, matched), labels=names),
                      ""])
        for key in names:
            record[key] = {"n": len(runs(key)), "lr": rate(runs(key)), "test_accuracy": pct(runs(key), "test_accuracy"),
                           "interference": pct(runs(key), "interference") if interference else None}

    d = design(args)
    examples = "texts" if d is TEXT else "images"
    every = max(1, args.rounds // 6) if d is TEXT else EVAL_EVERY
    since = int(0.8 * args.rounds) // every * every  # experiment.plateau's reference evaluation
    caption = (f"Chance accuracy: {100.0 / d.classes:.1f} % ({d.classes} classes). Test set: "
               f"{next(iter(g.values()))[0]['summary']['test_images'] if g else '?'} {examples}. "
               f"Cells: mean ± sample sd over seeds (n when not all {args.num_runs}); Δ: paired difference by seed, "
               "mean [95% t interval], verdicts Holm-corrected over each table's differences ('no difference after "
               "Holm over m' names the effect the simultaneous interval rules out), warnings after a verdict: fewer "
               "than 3 seeds, compute not matched (sample gradients; in the mask tables client steps), a rate at the "
               "edge of the grid it was chosen from; lr: the setting's rate, chosen on validation (selection.json); "
               "plateau: runs whose validation accuracy moved < 1 point since the last evaluation at or before 80 % "
               f"of the run (in the mask tables: since round {since} of {args.rounds}); sample gradients: one per "
               f"{examples[:-1]} of every local step, head warm-up and mask calibration included; interference: "
               "own-class test accuracy, local minus aggregated model, in points.")
    devices = sorted({str(r["meta"].get("device", "?")) for rs in g.values() for r in rs})
    lines += [caption + (f" Runs measured on: {'; '.join(devices)}." if devices else ""), ""]
    if d is TEXT:
        for shard in d.shards:
            title, (dense, probe, *masks) = d.shard_title(shard), text_names(shard)
            rows = [(dense, f"dense FedAvg ({title})"), (probe, "probe: head")]
            rows += [(name, f"{s}{' (TaLoS score)' if 'sensitive' in s else ''}, s = {sp:g}")
                     for name, (sp, s) in zip(masks, TEXT_MASKS)]
            section(f"Sparse fine-tuning of {args.weights} on AG News, {title} shards",
                    [(dense, f"dense {title}"), (probe, "probe (head)")], rows, interference=True,
                    matched="equal steps")
        lines.extend(skew_table(g, d, seeds))
        return "\n".join(lines) + "\n", record
    iid = f"FedAvg IID, J={J}, from the base"
    section("Pretrained base vs random initialisation, and centralized at equal sample gradients",
            [("fedavg_iid", iid)], [("fedavg_iid", iid), ("fedavg_iid_scratch", "FedAvg IID, J=4, from scratch"),
             ("centralized", "Centralized, from the base, same sample gradients")])
    section("Heterogeneity (pathological shards, Nc classes per client)", [("fedavg_iid", iid)],
            [("fedavg_iid", "IID")] + [(f"fedavg_nc{nc}", f"Nc = {nc}") for nc in sorted(args.nc_values, reverse=True)],
            interference=True)
    for shard in args.j_shards:
        ref = f"fedavg_{shard}"
        section(f"Local steps J at equal sample gradients (R x J fixed), {VIT.shard_title(shard)}",
                [(ref, iid if shard == "iid" else f"FedAvg Nc = 2, J={J}")],
                [(ref if j == J else f"fedavg_{shard}_J{j}", f"J = {j}, R = {max(1, round(args.rounds * J / j))}")
                 for j in sorted(args.j_values)], interference=shard != "iid")
    for shard in VIT.shards:
        title, dense, probe = VIT.shard_title(shard), f"fedavg_{shard}", f"probe_{shard}_head"
        for sp in args.sparsities:
            section(f"Sparse fine-tuning, {title} shards, sparsity {sp:g}", [(dense, f"dense {title}"),
                                                                             (probe, "probe (head)")],
                    mask_rows(shard, sp, sp == args.sparsities[0]), interference=True, matched="equal steps")
    return "\n".join(lines) + "\n", record


def saved_sessions(path: Path) -> list[dict]:
    """Training invocations of an earlier results.json (an older file's one wall time: one session of unknown size)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if "sessions" in saved:
        return saved["sessions"]
    return [{"finished_at": "before sessions were recorded", "runs_trained": None, "only": None,
             "wall_seconds": saved["wall_seconds"]}] if saved.get("wall_seconds") is not None else []


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    cli.check(args.rounds >= 4 and args.rounds % 4 == 0, f"--rounds must be a positive multiple of 4 (the J sweep "
                                                         f"divides it), got {args.rounds}")
    cli.check(J in args.j_values, f"--j-values must contain J = {J} (the FedAvg IID run)")
    cli.check(2 in args.nc_values, "--nc-values must contain 2 (the non-IID shards of the sparse runs)")
    if args.only:
        known = {name for name, _, _ in settings(args, "BASE", 4, every=True)}
        cli.check(set(args.only) <= known, f"--only: unknown settings {sorted(set(args.only) - known)}; "
                                           f"the suite's are {', '.join(sorted(known))}")
    if args.smoke:
        smoke(args)
    out = cli.check_out_dir(out_dir(args))
    t0 = time.perf_counter()
    sessions = saved_sessions(out / "results.json")
    base_job = None if args.text else base_job_of(out)
    base = args.weights if args.text else str(base_job.output)
    if args.table_only and (out / "selection").is_dir():
        choose(args, out, base)                                 # selection.json from the selection runs
    if not args.table_only:
        def train(runs: list[dict], folder: Path, stage: str) -> int:
            """Runs ``runs`` into ``folder``; how many trained."""
            outcome = jobs.run_plan(jobs_of(base_job, runs, folder), title=f"{design(args).name} suite: {stage}",
                                    parallel=args.jobs, threads=args.threads, log_dir=out / "logs")
            return len(outcome.names("finished", "diverged", "failed"))

        trained = 0
        rates = {name: args.lr for name, _, _ in settings(args, base, args.rounds)} if args.lr else None
        check_runs(args, out, base, rates)
        if rates is None:
            trained += train(plan(args, base), out / "selection", "learning-rate selection")
            rates = choose(args, out, base)
            for step in range(design(args).edge_steps):         # a rate at the grid's edge: one step beyond
                extra = edge_rates(args, out / "selection.json")
                if not extra:
                    break
                trained += train(plan(args, base, extra=extra), out / "selection",
                                 f"rates beyond the grid's edge ({step + 1})")
                rates = choose(args, out, base)
        missing = [name for name, _, _ in settings(args, base, args.rounds) if name not in rates]
        if missing:
            print(f"stopped after the selection stage: no finished selection run for {', '.join(missing)} "
                  f"(logs in {out / 'logs'})")
        else:
            trained += train(plan(args, base, rates), out, "reported runs")
        sessions.append({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs_trained": trained,
                         "only": args.only, "wall_seconds": time.perf_counter() - t0})
    text, record = make_table(args, out, base)
    # rewritten from the run directories on every call; results.json keeps every invocation that trained
    atomic_write_text(out / "results.md", text)
    atomic_write_json(out / "results.json", {"base": base, "num_runs": args.num_runs, "rounds": args.rounds,
                                             "design": dataclasses.asdict(design(args)), "sessions": sessions,
                                             "table": record})
    print(text)
    for part in sessions:
        print(f"{part['finished_at']}: {part['runs_trained'] if part['runs_trained'] is not None else '?'} runs trained"
              f"{' (--only ' + ' '.join(part['only']) + ')' if part['only'] else ''} in {part['wall_seconds']:.0f} s")
    print(f"results: {out / 'results.md'}, {out / 'results.json'} (rewritten from the run directories)")
    if not args.no_plots:
        jobs.draw("plots/plot_vit.py", "--runs-dir", str(out), "--out", str(out / "figures"))
    return {"table": record, "results_md": str(out / "results.md"), "sessions": sessions}


if __name__ == "__main__":
    cli.run(main)
