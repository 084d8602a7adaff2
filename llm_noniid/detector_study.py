"""The failure detectors validated out of sample: thresholds chosen on the calibration runs, rates on new seeds.

In the pretrained regime, each detector's threshold is chosen by ``choose`` on the calibration runs (the committed
grid's seeds 0-2, ``CALIBRATION``), and its hit and false-alarm rates are counted on runs of new seeds (``RECORDS``)
that took no part in the choice.

    python llm_noniid/detector_study.py --seeds 3 4 5 --split-csv ../shared/data/ag_news_csv/test.csv
    python llm_noniid/detector_study.py --report                  # the held-out table (the README's block)

The runs are run_experiments.py's ``--regime pretrained`` runs at the rate and mu the committed grid selected (its
selection.json): calibrate's arms, each built to show one failure, and the healthy class's (FedAvg, FedProx and
SCAFFOLD on iid shards); a run's class is ``studies.KNOWN``'s. They run through ``common.jobs`` (finished
runs skipped, interrupted ones resumed) into ``--out-dir`` (default: the grid's own, which holds its data split and
pretrains its base on first use), then each finished run's args.json, summary.json and metrics.jsonl (no checkpoint)
go to ``--records``, which ``--report`` and the README's ``llm_noniid.detectors`` block read
(``llm_noniid/results.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common import cli, flags, jobs
from common import results as RS
from common import stats as S
from common.errors import check
from common.study import SELECTION_FILE, read_selection
from llm_noniid import failure, studies, train
from llm_noniid import run_experiments as E
from llm_noniid.report import arm_of, detected

CALIBRATION = "llm_noniid/results/pretrained/grid"  # the runs that choose the thresholds (its runs/, seeds 0-2)
RECORDS = "llm_noniid/results/pretrained/detectors"  # the held-out runs (new seeds)
SEEDS = (3, 4, 5)
HEALTHY = "healthy (iid, full participation)"
# the classes built to fail (studies.KNOWN's names), each calibrate's arm of one name of --arms
BUILT = {"diverging": "diverging (8x the rate, no clipping)",
         "one-client": "oscillating (topic skew, 1 client/round)",
         "oscillating": "oscillating by construction (topic skew, 1 client/round, 8x the local steps)",
         "drift-iid": "drifting by construction (iid, 8x the local steps)",
         "drift-topic": "drifting by construction (topic skew, 8x the local steps)"}
# the classes each detector is built to find; a flag on any other class is a false alarm
TARGETS = {
    "divergence": (BUILT["diverging"],),
    "oscillation": (BUILT["oscillating"],),
    # one client fitted for 8x the local steps each round drifts by the same construction as the 8x-steps arms
    "client_drift": (BUILT["drift-iid"], BUILT["drift-topic"], BUILT["oscillating"]),
    # a tenth of the local steps a round (one client of ten, 8 steps): slow per round by construction
    "slow_convergence": (BUILT["one-client"],),
}
# --arms: the arms run on new seeds, by name: (partition, arm label) -> whether it is that arm
ARMS = {"fedavg": lambda p, a: p == "iid" and a == "FedAvg",
        "fedprox": lambda p, a: p == "iid" and a.startswith("FedProx mu="),
        "scaffold": lambda p, a: p == "iid" and a == "SCAFFOLD",
        **{name: studies.KNOWN[c] for name, c in BUILT.items()}}


# ----------------------------------------------------------------------------- the split
def classify(runs: list[dict], rounds: int, lr: float) -> dict[str, list[dict]]:
    """{class: runs} of ``runs`` (each with "args") by ``studies.KNOWN``, at the grid's ``rounds`` and rate
    ``lr``; a run of no class is left out."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        part, arm = arm_of(r["args"], rounds, lr, studies.LOCAL_STEPS)
        for name, is_ in studies.KNOWN.items():
            if is_(part, arm):
                out.setdefault(name, []).append(r)
    return out


def flagged(run: dict, mode: str, th) -> bool:
    """Whether detector ``mode`` at thresholds ``th`` flags the run, from its logged curve (``rows``)."""
    return mode in detected(run, th)


def at(mode: str, value: float):
    """The default thresholds with detector ``mode``'s key threshold at ``value``."""
    return dataclasses.replace(failure.DEFAULT, **{failure.SWEEPS[mode].key: value})


def count(runs: list[dict], mode: str, value: float) -> tuple[int, int]:
    """(runs flagged, runs) by detector ``mode`` at ``value``."""
    return sum(flagged(r, mode, at(mode, value)) for r in runs), len(runs)


@dataclass(frozen=True)
class Choice:
    """A detector's threshold chosen on the calibration runs: ``value`` (None when every value of the sweep flags a
    healthy run) and whether it is the sweep's most sensitive value (``edge``: a more sensitive one was not tried)."""

    mode: str
    value: float | None
    edge: bool


def choose(classes: dict[str, list[dict]], mode: str) -> Choice:
    """The rule: the most sensitive value of ``failure.SWEEPS[mode]`` that flags no healthy run of ``classes``.
    A detector's flags only grow with its sensitivity, so of the values that flag no healthy run this one flags the
    most runs of every class."""
    healthy = classes.get(HEALTHY, [])
    check(bool(healthy), f"no healthy run ({HEALTHY}) to choose the {mode} threshold on")
    values = failure.SWEEPS[mode].values
    ok = [v for v in values if count(healthy, mode, v)[0] == 0]
    return Choice(mode, ok[0] if ok else None, bool(ok) and ok[0] == values[0])


def rates(classes: dict[str, list[dict]], mode: str, value: float) -> dict[str, tuple[int, int]]:
    """{"hit": runs of ``mode``'s target classes flagged, "healthy": healthy runs flagged, "other": runs of every
    other class flagged}, each (k, n), at ``value``."""
    def of(names) -> tuple[int, int]:
        return count([r for c in names for r in classes.get(c, [])], mode, value)

    others = [c for c in classes if c != HEALTHY and c not in TARGETS[mode]]
    return {"hit": of(TARGETS[mode]), "healthy": of([HEALTHY]), "other": of(others)}


def seeds(classes: dict[str, list[dict]]) -> list[int]:
    return sorted({r["args"]["seed"] for g in classes.values() for r in g})


def table(calibration: dict[str, list[dict]], held_out: dict[str, list[dict]]) -> str:
    """The README's block: per detector the value ``choose`` takes on ``calibration`` ({class: runs}), what it flags
    there, and its hit and false-alarm rates on ``held_out`` (other seeds only: refused otherwise), with 95 % Wilson
    intervals; the default (``failure.DEFAULT``) in a row of its own where the rule chose another value. Then the
    runs of each class on either side."""
    cal, new = seeds(calibration), seeds(held_out)
    check(not set(cal) & set(new), f"held-out seeds {new} overlap the calibration seeds {cal}: the rates would be "
                                   "measured on runs that chose the thresholds")
    rows, held = [], {}
    for mode in failure.MODES:
        sweep, choice = failure.SWEEPS[mode], choose(calibration, mode)
        default = getattr(failure.DEFAULT, sweep.key)
        grid = f"{sweep.key} ∈ {{{', '.join(f'{v:g}' for v in sorted(sweep.values))}}}"
        said = ["chosen", *(["edge"] if choice.edge else []), *(["the default"] if choice.value == default else [])]
        values = {} if choice.value is None else {choice.value: ", ".join(said)}
        if choice.value is None:
            rows.append([mode, grid, "none chosen: every value flags a healthy run", *["–"] * 4])
        if default != choice.value:
            values[default] = "the default, not the rule's choice"
        if choice.value is not None:
            held[mode] = (rates(calibration, mode, choice.value), rates(held_out, mode, choice.value))
        for value, why in values.items():
            fit, test = rates(calibration, mode, value), rates(held_out, mode, value)
            rows.append([mode, grid, f"{value:g} ({why})", f"{fit['hit'][0]}/{fit['hit'][1]} of its classes, "
                         f"{fit['healthy'][0]}/{fit['healthy'][1]} healthy",
                         *(S.fmt_proportion(*test[k]) for k in ("hit", "healthy", "other"))])
    lines = S.markdown(["detector", "threshold swept", "value", f"flagged on the calibration runs (seeds "
                        f"{_seeds(cal)})", f"held out (seeds {_seeds(new)}): hits", "false alarms: healthy runs",
                        "false alarms: runs of other classes"], rows)
    runs = S.markdown(["class", "built to show", "calibration runs", "held-out runs"],
                      [[c, ", ".join(m for m, t in TARGETS.items() if c in t)
                        or ("nothing (healthy)" if c == HEALTHY else "none of the four"),
                        len(calibration.get(c, [])), len(held_out.get(c, [])) or "not run"]
                       for c in studies.KNOWN if c in calibration or c in held_out])
    return "\n".join([*lines, "", verdict(held), "", *runs])


def verdict(held: dict[str, tuple[dict, dict]]) -> str:
    """One sentence on the held-out rates at the chosen values ({mode: (calibration rates, held-out rates)}): the
    detectors that flag every held-out run of their classes and nothing else, then each other one as it fared."""
    clean = [m for m, (_, t) in held.items() if t["hit"][0] == t["hit"][1] > 0 and not t["healthy"][0]
             and not t["other"][0]]
    names = ", ".join(clean[:-1]) + (" and " if len(clean) > 1 else "") + (clean[-1] if clean else "")
    text = (f"At the chosen values, on the held-out runs, {names} flag every run of their classes and "
            "no other run" if clean else "At the chosen values no detector flags every held-out run of its classes "
            "and no other run")
    rest = [f"{m} flags {t['hit'][0]}/{t['hit'][1]} of its classes' runs (on the calibration runs "
            f"{f['hit'][0]}/{f['hit'][1]}), {t['healthy'][0]}/{t['healthy'][1]} healthy and {t['other'][0]}/"
            f"{t['other'][1]} of the other classes'" for m, (f, t) in held.items() if m not in clean]
    return text + ("; " + "; ".join(rest) if rest else "") + "."


def _seeds(values: list[int]) -> str:
    return ", ".join(map(str, values))


def report(calibration: str = CALIBRATION, held_out: str = RECORDS) -> str:
    """``table`` from the committed records (read through ``common.results``): the calibration grid's runs
    (``calibration``/runs) and the held-out runs (``held_out``), each classified at the grid's rounds and selected
    rate, with the rule and the counts said below it."""
    lr = selection(calibration)["learning_rate"]

    def classes(folder: str) -> dict:
        found = classify(RS.records(folder), studies.PRETRAINED_ROUNDS, lr)
        for r in (r for g in found.values() for r in g):
            text = (r["path"] / "metrics.jsonl").read_text(encoding="utf-8")
            r["rows"] = [json.loads(x) for x in text.splitlines() if x.strip()]
        return found

    cal, new = classes(f"{calibration}/runs"), classes(held_out)
    first, last = calibration.split("/", 1)[1], held_out.split("/", 1)[1]  # as llm_noniid/README.md links them
    return (table(cal, new) + f"\n\nThresholds chosen on the calibration runs alone ([`{first}`]({first}), seeds "
            f"{_seeds(seeds(cal))}) by one rule (`detector_study.choose`): for each detector the most sensitive value "
            "of its sweep that flags no healthy run (\"edge\": the sweep's most sensitive value, so a more sensitive "
            "one was not tried), every other threshold at its default. Rates on the held-out runs "
            f"([`{last}`]({last}), seeds {_seeds(seeds(new))}), which took no part in the choice: hits are the runs "
            "of the classes a detector is built to find that it flags, false alarms the healthy runs and the runs of "
            "every other class that it flags; k/n with a 95 % Wilson interval. The held-out runs took "
            f"{sum(r['summary'].get('cpu_seconds') or 0 for g in new.values() for r in g) / 60:.1f} CPU minutes "
            "(their summaries' cpu_seconds).")


# ----------------------------------------------------------------------------- the runs
def selection(calibration: str = CALIBRATION) -> dict:
    """What the committed grid's selection.json chose (``studies.setting_of``): the rate and mu every run of
    this study trains at."""
    return studies.setting_of(read_selection(RS.path(calibration) / SELECTION_FILE))


def plan(args, prepare: bool = True) -> list[jobs.Job]:
    """The train.py jobs of ``--arms`` at ``--seeds``: run_experiments' calibrate and failure grids in the pretrained
    regime at the committed selection, kept where the run is one of those arms (``prepare`` False: no data split,
    no base pretrained, as the tests check them)."""
    chosen = selection()
    grid = argparse.Namespace(out_dir=args.out_dir, split_csv=args.split_csv, regime="pretrained", rounds=None,
                              base=args.base, seeds=",".join(map(str, args.seeds)))
    out: dict[str, jobs.Job] = {}
    for mode in ("calibrate", "failure"):
        for job in E.plan(mode, grid, [], chosen, prepare=prepare):
            run = vars(cli.parse(train.get_args_parser(), job.argv))
            part, arm = arm_of(run, studies.PRETRAINED_ROUNDS, chosen["learning_rate"], studies.LOCAL_STEPS)
            if any(ARMS[a](part, arm) for a in args.arms):
                out.setdefault(job.name, job)
    return list(out.values())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.add_argument("--seeds", type=flags.SEED, nargs="+", default=list(SEEDS),
                   help="seeds of every arm: not the calibration's 0, 1, 2")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the arms to run")
    p.add_argument("--out-dir", type=flags.FOLDER, default="runs/llm_noniid_pretrained",
                   help="the pretrained grid's out-dir: its data split and base are reused")
    p.add_argument("--split-csv", default=None, help="the AG News CSV split 90/10 into <out-dir>/data (default: "
                   "the one run_experiments.py --regime pretrained uses)")
    p.add_argument("--base", default=None, help="the base folder (default: pretrain.py's with "
                   "studies.BASE_FLAGS, pretrained on first use)")
    p.add_argument("--records", type=flags.FOLDER, default=RECORDS, help="where finished runs' records are copied "
                   "(args.json, summary.json, metrics.jsonl)")
    p.add_argument("--jobs", type=flags.POSITIVE_INT, default=1, help="runs at a time (one process each)")
    p.add_argument("--report", action="store_true", help="print the held-out table from the committed records")
    p.add_argument("--dry-run", action="store_true", help="print the runs that would start")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.report:
        print(report())  # the README block's text
        return 0
    check(not set(args.seeds) & {0, 1, 2}, f"--seeds {args.seeds}: seeds 0, 1, 2 are the calibration runs")
    if args.split_csv is None:
        args.split_csv = str(studies.SHARED_AG_NEWS)
    out = Path(args.out_dir)
    outcome = jobs.run_study(plan(args, prepare=not args.dry_run), args.records, parallel=args.jobs,
                             log_dir=out / "logs", dry_run=args.dry_run, title="detector study",
                             next_step="python llm_noniid/detector_study.py --report")
    return outcome.exit_code(args.dry_run)


if __name__ == "__main__":
    cli.run(main)
