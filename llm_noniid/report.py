"""llm_noniid's grid report: the tables and sentences of ``run_experiments.py --mode analyze``, from the records.

    python llm_noniid/run_experiments.py --mode analyze --out-dir runs/llm_noniid/ag_news

``report`` reads a grid's runs (``load_grid``: <out-dir>/runs and its selection.json), labels each run by its
arguments as ``studies.arms`` names it (``arm_of``), and writes <out-dir>/report.md: the reference points, each
grid's table against FedAvg, the budget check, the equal-compute and "does the split hurt" tables, the side by side
with another regime's grid (``--compare-dir``, with its figure ``figures/side_by_side.png``) and the detectors'
rates; arms.json labels the runs for ``plots/plot_llm_noniid.py`` (``figure_command``), which draws the other
figures. What is compared, over which Holm family, and the plateau rule are ``studies``'s; ``results.py`` quotes
these tables' cells in the README blocks.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from common import cli, study_report
from common import runs as R
from common import stats as S
from common import study as SD
from common.checkpoint import atomic_write_json
from llm_noniid import failure
from llm_noniid.studies import (
    BUDGET_GAIN,
    KEYS,
    KNOWN,
    LOCAL_STEPS,
    PLATEAU_GAIN,
    PLATEAU_TAIL,
    ROUNDS,
    SIDE_BY_SIDE,
    arms,
    equal_compute,
    name,
    setting_of,
    side_by_side_study,
    table_study,
)

ARMS_FILE = "arms.json"  # {run name: [partition, arm]}, the figures' labels


def arm_of(a: dict, rounds: int = ROUNDS, lr: float = 1.0, steps: int = LOCAL_STEPS) -> tuple[str, str]:
    """(partition label, arm label) of a run's args.json as ``arms`` names them (a run at another rate ``lr`` or
    local ``steps`` than the grid's is labelled with them)."""
    part = {"iid": "iid", "style_skew": f"style ({a.get('style_criterion')})",
            "token_skew": f"token ({a.get('token_skew')})"}.get(a["partition"]) or f"topic a={a.get('alpha'):g}"
    arm = {"fedavg": "FedAvg", "scaffold": "SCAFFOLD"}.get(a["algorithm"], a["algorithm"])
    if a["algorithm"] == "fedprox":
        arm = f"FedProx mu={a['mu']:g}"
    if a.get("clustering", "none") == "data":
        arm = "local only (10 clusters)" if a.get("num_clusters") == a["num_clients"] else f"{arm} + data clusters"
    elif a.get("clustering") == "ifca":
        arm += f" + IFCA ({a['num_clusters']})"
    elif a.get("learning_rate", 1.0) != lr:
        arm += f" lr {a['learning_rate']:g}, " + (f"clip {a['max_grad_norm']:g}" if a.get("max_grad_norm") else
                                                   "no clipping")
    elif (rate := a.get("participation_rate", 1.0)) < 1.0:
        m = max(1, round(rate * a["num_clients"]))
        arm += ", 1 client/round" if m == 1 else f", {m} of {a['num_clients']} clients/round"
    if a.get("local_steps", steps) != steps:
        arm += f", {a['local_steps']} local steps"
    return part, arm + (f", {a['num_rounds']} rounds" if a.get("num_rounds", rounds) != rounds else "")


def grid_steps(runs: list[dict], rounds: int) -> int:
    """The grid's local steps: the most common among its runs of ``rounds`` rounds."""
    steps = Counter(r["args"].get("local_steps", LOCAL_STEPS) for r in runs if r["args"].get("num_rounds") == rounds)
    return steps.most_common(1)[0][0] if steps else LOCAL_STEPS


def by_arm(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0) -> dict[tuple, list[dict]]:
    """{(partition, arm): runs} by ``arm_of`` (``lr``: the grid's rate; its local steps: ``grid_steps``)."""
    groups: dict[tuple, list] = {}
    steps = grid_steps(runs, rounds)
    for r in runs:
        groups.setdefault(arm_of(r["args"], rounds, lr, steps), []).append(r)
    return groups


def at_plateau(run: dict) -> bool:
    """Whether the run meets the plateau criterion (a diverged or non-finite curve does not)."""
    ppl = [r["val_ppl"] for r in run.get("rows", []) if "val_ppl" in r]
    if len(ppl) < 3 or not all(map(math.isfinite, ppl)):
        return False
    return S.plateau_gain([-math.log(v) for v in ppl], tail=PLATEAU_TAIL) < math.log1p(PLATEAU_GAIN)


def detected(run: dict, th: failure.Thresholds = failure.DEFAULT) -> dict[str, int]:
    """The failure modes of a run, detected again from its logged curve (and the perplexity before training)."""
    return failure.detect(run["rows"], th, (run.get("summary") or {}).get("initial_val_ppl"))


def budget_table(groups: dict[tuple, list[dict]], rounds: int) -> list[str]:
    """The final perplexity of each arm with a twice-the-rounds twin (``studies.twins``) at the grid's rounds and at
    twice them (same seed) on each partition, and whether doubling the budget gains less than BUDGET_GAIN."""
    rows = []
    for part in dict.fromkeys(p for p, _ in groups):
        for label in [a for p, a in groups if p == part and (part, f"{a}, {2 * rounds} rounds") in groups]:
            short, long = (R.by_seed(groups.get((part, a), []), "final_val_ppl")
                           for a in (label, f"{label}, {2 * rounds} rounds"))
            for seed in sorted(set(short) & set(long)):
                gain = 1 - long[seed] / short[seed]
                rows.append([part, label, seed, f"{short[seed]:.1f}", f"{long[seed]:.1f}", f"{100 * gain:.1f} %",
                             "yes" if gain < BUDGET_GAIN else "no"])
    return S.markdown(["partition", "arm", "seed", f"{rounds} rounds", f"{2 * rounds} rounds",
                       "gain from doubling", f"< {BUDGET_GAIN:.0%}"], rows) if rows else ["(not run yet)"]


def grid_table(family: str, groups: dict[tuple, list[dict]], refs: dict[tuple, tuple], keys: tuple[str, ...],
               columns: list, rows: list[tuple], compute: str = "") -> list[str]:
    """``common.study_report.table`` over a grid's runs ``groups`` {(partition, arm): runs}: its study
    (``studies.table_study``) compares each arm of ``refs`` {arm: its reference} with its reference in each of
    ``keys``, one Holm family ``family``, over the seeds the runs have; one line per arm of ``rows``. An arm whose
    every seed diverged is "diverged", compared with nothing; ``compute``: what each pair is matched on (training
    tokens, said beside a verdict where they differ)."""
    runs = {name(*k): g for k, g in groups.items()}
    s = table_study(family, refs, keys, tuple(sorted({r["args"]["seed"] for g in groups.values() for r in g})),
                    compute)
    values = lambda arm, key: R.by_seed(runs.get(arm, []), key)  # noqa: E731
    diverged = {a: "diverged" for a in (a.name for a in s.arms) if (v := values(a, "final_val_ppl"))
                and not any(map(math.isfinite, v.values()))}
    tokens = lambda arm, _: {r["args"]["seed"]: r["summary"]["train_tokens"] for r in runs.get(arm, [])  # noqa: E731
                             if r.get("summary")}
    return study_report.table(s, values, columns, [name(*k) for k in rows], spent=tokens if compute else None,
                              skip=diverged)


def label_columns(*headers: str) -> list[study_report.Text]:
    """The columns of a row's labels (partition, arm, ...): its name's parts."""
    return [study_report.Text(h, lambda row, i=i: row.split(" / ")[i]) for i, h in enumerate(headers)]


def compute(g: list[dict], ref: list[dict]) -> str:
    """Training tokens through forward/backward of runs ``g`` as a multiple of ``ref``'s: '1.00x' ('–' unknown)."""
    tokens = [[r["summary"]["train_tokens"] for r in x if r.get("summary")] for x in (g, ref)]
    return f"{np.mean(tokens[0]) / np.mean(tokens[1]):.2f}x" if all(tokens) else "–"


def table(runs: list[dict], mode: str, rounds: int = ROUNDS, lr: float = 1.0, mus: dict | None = None) -> list[str]:
    """Markdown table of ``mode``'s arms; Δ: the paired difference to FedAvg on its partition, both perplexities in
    one Holm family (the grid's). The best perplexity of any evaluated round is an optimistic oracle early stop;
    beside the final one it shows overfitting."""
    groups = by_arm(runs, rounds, lr)
    rows = [(p, a) for p, a, _ in arms(mode, rounds, mus, lr)]
    of = lambda row: groups.get(tuple(row.split(" / ")), [])  # noqa: E731
    tally = lambda items, of="": ", ".join(f"{k} {v}{of}" for k, v in sorted(Counter(items).items()))  # noqa: E731

    def run(cell):  # a column of the caller's, "–" in a row without runs
        return lambda row: cell(of(row), row.split(" / ")[0]) if of(row) else "–"

    columns = [*label_columns("partition", "arm"), study_report.Text("n", lambda row: len(of(row))),
               study_report.Value("final ppl", "final_val_ppl"), study_report.Delta("Δ vs FedAvg", "final_val_ppl"),
               study_report.Value("personalised ppl", "final_personal_val_ppl"),
               study_report.Delta("Δ vs FedAvg", "final_personal_val_ppl"),
               study_report.Value("best ppl (any round)", "best_val_ppl"),
               study_report.Text("compute", run(lambda g, p: compute(g, groups.get((p, "FedAvg"), [])))),
               study_report.Text("status", run(lambda g, p: tally((r.get("summary") or {}).get("status", "running")
                                                                  for r in g))),
               study_report.Text("failure modes (runs)", run(lambda g, p: tally((m for r in g for m in detected(r)),
                                                                                f"/{len(g)}") or "none")),
               study_report.Text("at plateau", run(lambda g, p: f"{sum(map(at_plateau, g))}/{len(g)}"))]
    return grid_table(f"{mode} grid", groups, {(p, a): (p, "FedAvg") for p, a in rows if a != "FedAvg"}, KEYS,
                      columns, rows)


def references(runs: list[dict]) -> list[str]:
    """The reference points every run reports (they depend on the split only through the held-out texts), over
    the seeds: every arm of a split and seed reports the same value (up to float summation order), so a seed counts
    once, with its runs' mean (n is the seeds, not the runs)."""
    out = []
    for part in sorted({arm_of(r["args"])[0] for r in runs}):
        g = [r for r in runs if arm_of(r["args"])[0] == part and r.get("summary")]

        def per_seed(key: str, g: list[dict] = g) -> list[float]:
            seeds: dict = {}
            for r in g:
                if r["summary"].get(key):
                    seeds.setdefault(r["args"].get("seed"), []).append(r["summary"][key])
            return [sum(v) / len(v) for _, v in sorted(seeds.items(), key=lambda kv: str(kv[0]))]

        pers, before = per_seed("personal_unigram_ppl"), per_seed("initial_val_ppl")
        out.append([part, f"{g[0]['summary']['uniform_ppl']:.0f}", S.fmt(S.summarize(per_seed("unigram_val_ppl"))),
                    S.fmt(S.summarize(pers)) if pers else "–", S.fmt(S.summarize(before)) if before else "–"])
    return S.markdown(["partition", "uniform ppl", "unigram ppl (global validation)",
                       "each client's own unigram on its held-out texts",
                       "the model before training (random init, or a base's zero-shot)"], out)


def detector_table(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0) -> list[str]:
    """Share of runs each detector flags (``detected``) per class of runs whose behaviour is known by construction:
    the healthy column is the false-positive rate, the matching column the detection rate."""
    groups = by_arm([r for r in runs if r.get("summary")], rounds, lr)  # finished runs only
    classes = {name: g for name, is_ in KNOWN.items() if (g := [r for k, rs in groups.items() if is_(*k) for r in rs])}
    if not classes:
        return ["(no runs of a known class yet: run --mode failure and --mode calibrate)"]
    share = lambda mode, t=failure.DEFAULT: [f"{sum(mode in detected(r, t) for r in g)}/{len(g)}"
                                             for g in classes.values()]
    th = vars(failure.Thresholds())
    # the calibration: each detector's key threshold swept (``failure.SWEEPS``), the others at their defaults
    sweeps = {mode: (s.key, sorted(s.values)) for mode, s in failure.SWEEPS.items()}
    return [*S.markdown(["detector", *(f"{k} (n={len(v)})" for k, v in classes.items())],
                        [[mode, *share(mode)] for mode in failure.MODES]),
            "", "Thresholds (`llm_noniid/failure.py`, `Thresholds`): " + ", ".join(f"{k} = {v:g}" for k, v in
                                                                                  th.items()) + ".", "",
            "Calibration (share of runs flagged, one threshold varied):", "",
            *S.markdown(["detector", "threshold", *classes],
                        [[mode, f"{key} = {v:g}" + (" (default)" if v == th[key] else ""),
                          *share(mode, failure.Thresholds(**{**th, key: v}))]
                         for mode, (key, values) in sweeps.items() for v in values])]


def is_twin(key: tuple[str, str], groups: dict[tuple, list[dict]], rounds: int) -> bool:
    """Whether (partition, arm) is the budget check's twin of an arm of ``groups`` (the same arm at twice the
    rounds, ``studies.twins``): the plateau check of that arm, not an arm of its own."""
    part, arm = key
    suffix = f", {2 * rounds} rounds"
    return arm.endswith(suffix) and (part, arm[:-len(suffix)]) in groups


def split_table(groups: dict[tuple, list[dict]], rounds: int = ROUNDS) -> list[str]:
    """Does the split hurt: each arm's final validation perplexity on a non-iid partition minus on iid, paired by
    seed (only the global validation texts are shared across partitions, so not the personalised perplexity); one
    Holm family over the table, the budget check's twins left out (``is_twin``: they check a plateau)."""
    rows = sorted((p, a) for p, a in groups if p != "iid" and ("iid", a) in groups
                  and not is_twin((p, a), groups, rounds))
    if not rows:
        return ["(no arm run on iid and a non-iid partition yet)"]
    on_iid = study_report.Value("on iid", "final_val_ppl", lambda row: name("iid", row.split(" / ")[1]))
    return grid_table("does the split hurt", groups, {(p, a): ("iid", a) for p, a in rows}, ("final_val_ppl",),
                      [*label_columns("partition", "arm"), study_report.Value("final ppl", "final_val_ppl"), on_iid,
                       study_report.Delta("Δ vs iid (same arm)", "final_val_ppl")], rows)


def equal_compute_table(runs: list[dict], rounds: int = ROUNDS, lr: float = 1.0,
                        arms_: list[tuple[str, str, str]] | None = None) -> list[str]:
    """Paired differences between arms that train about as many tokens (``arms_``, default ``equal_compute``), both
    perplexities in one Holm family; a pair whose tokens differ by more than 1 % says so."""
    groups = by_arm(runs, rounds, lr)
    pairs = {(p, a): (p, ref) for p, a, ref in arms_ or equal_compute(rounds)}
    of = lambda row: tuple(row.split(" / "))  # noqa: E731

    def ratio(row: str) -> str:
        g, ref = groups.get(of(row), []), groups.get(pairs[of(row)], [])
        return compute(g, ref) if g and ref else "not run"

    return grid_table("equal compute", groups, pairs, KEYS, [
        *label_columns("partition", "arm"),
        study_report.Text("reference (about the same compute)", lambda row: pairs[of(row)][1]),
        study_report.Text("compute ratio", ratio), study_report.Delta("Δ final ppl", "final_val_ppl"),
        study_report.Delta("Δ personalised ppl", "final_personal_val_ppl")], list(pairs), compute="equal samples")


def load_grid(out_dir: Path) -> tuple[list[dict], int, dict]:
    """A grid's runs, its rounds (the most common among the runs not named for another length, the larger on a
    tie: ``run_experiments.jobs_for`` adds ``_R<rounds>`` to an arm run longer than the grid, such as the budget
    check's twins) and its ``selection.json``, the record ``run_experiments.select`` wrote ({} if none)."""
    runs = R.load_runs(out_dir / "runs", "*")
    cli.check(bool(runs), f"no runs under {out_dir}/runs; run --mode failure / main / calibrate first")
    plain = [r for r in runs if not r["name"].endswith(f"_R{r['args']['num_rounds']}")] or runs
    counts = Counter(r["args"]["num_rounds"] for r in plain)
    rounds = max(counts, key=lambda k: (counts[k], k))
    record = SD.read_selection(out_dir / SD.SELECTION_FILE) if (out_dir / SD.SELECTION_FILE).is_file() else {}
    return runs, rounds, record


def side_by_side(grids: dict[str, tuple[list[dict], int, dict]], mus: dict) -> tuple[list[str], dict]:
    """The headline arms in each regime ({regime label: ``load_grid``'s result}): final perplexity, each arm's
    change vs FedAvg on its partition and each topic-skewed arm's vs the same arm on iid, in percent of the
    reference's perplexity (paired by seed, one Holm family over the table), so regimes on different scales read
    alike. Returns the Markdown and {(regime, part, arm): per-seed % vs FedAvg}."""
    def change(g: dict, ref: dict) -> dict:  # per-seed % change of g vs ref, on the seeds finite in both
        return {s: 100 * (g[s] / ref[s] - 1) for s in g if s in ref and math.isfinite(g[s]) and math.isfinite(ref[s])}

    final, plateau = {}, {}
    for regime, (runs, rounds, record) in grids.items():
        groups = by_arm(runs, rounds, setting_of(record).get("learning_rate", 1.0))
        for part, arm, _ in arms("headline", rounds, mus):
            g = groups.get((part, arm), [])
            final[(regime, part, arm)] = R.by_seed(g, "final_val_ppl")
            plateau[name(regime, part, arm)] = f"{sum(map(at_plateau, g))}/{len(final[(regime, part, arm)])}"
    # each metric's reference (``studies.SIDE_BY_SIDE``); its own change is 0 at each finite seed, so the pair is
    # the arm's change against 0
    values = {name(*k): {"final_val_ppl": g, **{m: change(g, final.get(ref(*k), {}))
                                                for m, ref in SIDE_BY_SIDE.items()}}
              for k, g in final.items()}
    s = side_by_side_study(list(final), tuple(sorted({r["args"]["seed"] for runs, _, _ in grids.values()
                                                      for r in runs})))
    table_ = study_report.table(s, lambda arm, metric: values[arm][metric], [
        *label_columns("regime", "partition", "arm"),
        study_report.Text("n", lambda row: len(values[row]["final_val_ppl"])),
        study_report.Value("final ppl", "final_val_ppl"),
        study_report.Delta("Δ vs FedAvg (% of FedAvg's ppl)", "% vs FedAvg"),
        study_report.Delta("Δ vs the same arm on iid (% of its ppl)", "% vs iid"),
        study_report.Text("at plateau", plateau.get)], [name(*k) for k in final])
    return table_, {k: values[name(*k)]["% vs FedAvg"] for k in final}


def draw_side_by_side(pct: dict, out: Path) -> list[Path]:
    """``side_by_side``'s per-seed % changes as bars (mean ± sample sd), one panel per regime."""
    import matplotlib.pyplot as plt  # common.runs has chosen the Agg backend
    regimes = list(dict.fromkeys(k[0] for k in pct))
    labels = list(dict.fromkeys((p, a) for _, p, a in pct if a != "FedAvg"))
    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 3.6), sharey=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for j, part in enumerate(dict.fromkeys(p for p, _ in labels)):
            at = [i for i, (p, _) in enumerate(labels) if p == part]
            R.draw_seeds(ax, at, [list(pct.get((regime, *labels[i]), {}).values()) for i in at], label=part,
                         kind="bars", width=0.8, color=f"C{j}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(labels)), [a for _, a in labels], rotation=30, ha="right", fontsize=8)
        ax.set_title(regime, fontsize=10)
    axes[0][0].set_ylabel("final ppl vs FedAvg (%)\n(bar: mean, error bar: sample sd over seeds)")
    R.figure_legend(fig, axes[0], ncol=2)
    return R.savefig(fig, out)


def report(out_dir: Path, title: str | None = None, compare_dir: Path | None = None, write: bool = True) -> str:
    """The grid's report (its Markdown); ``write``: also report.md, arms.json and the side-by-side figure there."""
    runs, rounds, record = load_grid(out_dir)
    chosen = setting_of(record)
    lr, mus = chosen.get("learning_rate", 1.0), chosen.get("mu")
    steps = grid_steps(runs, rounds)
    a0 = next((r["args"] for r in runs if (r["args"].get("num_rounds"), r["args"].get("local_steps", LOCAL_STEPS),
                                           r["args"].get("learning_rate", lr)) == (rounds, steps, lr)), runs[0]["args"])
    regime = "a pretrained base fine-tuned with LoRA" if a0.get("lora_r") else "from scratch, every parameter"
    lines = [f"## {title or f'llm_noniid results, {regime}: {R.shown(out_dir)}'}", "",
             f"Data {a0.get('data')} ({R.shown(a0.get('data_dir')) or 'embedded'}), model {R.shown(a0.get('model'))} "
             f"(lora_r {a0.get('lora_r')}), {a0.get('num_clients')} clients, {a0.get('local_steps')} local "
             f"{a0.get('local_optimizer')} steps per client per round at lr {a0.get('learning_rate'):g}"
             f"{' (its peak: a cosine over the rounds)' if a0.get('lr_schedule') == 'cosine' else ''}, "
             f"{rounds} rounds (arms named '..., N rounds' run N). Mean ± sample sd over seeds (n when not every "
             "seed); Δ = paired difference to FedAvg on the same partition (same seeds, diverged ones left out) with "
             "its 95% t interval, the verdicts Holm-corrected over all the table's comparisons ('p_Holm = x over m'; "
             "'no difference after Holm over m; rules out > x': the simultaneous interval rules out effects larger "
             "than x; fewer than 3 seeds said after it); an arm whose every seed diverged is 'diverged', not "
             "compared. Compute: training tokens through forward/backward, as a multiple "
             f"of FedAvg's. At plateau: runs whose last {PLATEAU_TAIL:.0%} of evaluations improve on the best "
             f"validation perplexity before them by less than {PLATEAU_GAIN:.0%}.", ""]
    if "learning_rate" in chosen and mus:
        ran = record["runs"]
        lines += [f"Chosen on a selection split (10% of the training texts; seed {', '.join(map(str, ran['seeds']))}, "
                  f"{ran['rounds']} rounds; `selection.json` holds every score): FedAvg's rate "
                  f"{chosen['learning_rate']:g} on IID shards, FedProx mu " + ", ".join(
                      f"{v} ({k})" for k, v in mus.items()) + f". Base: `{R.shown(ran['base'])}`.", ""]
    lines += ["### Reference points", "", *references(runs), ""]
    groups = by_arm(runs, rounds, lr)
    # the figures label runs as the tables do (plot_llm_noniid.py --arms)
    if write:
        atomic_write_json(out_dir / ARMS_FILE, {r["name"]: list(k) for k, g in groups.items() for r in g
                                                if r["summary"]})
    for mode in ("headline", "failure", "main", "calibrate"):  # each grid's table of its own arms' runs
        sel = list({id(r): r for p, a, _ in arms(mode, rounds, mus, lr) for r in groups.get((p, a), [])}.values())
        if not sel:
            continue
        lines += [f"### {mode} grid", "", *table(sel, mode, rounds, lr, mus), ""]
        if mode == "headline":
            why = (f"each run's rate decays to 0 by its last round, so its last {PLATEAU_TAIL:.0%} look flat "
                   "whatever the budget; " if a0.get("lr_schedule") == "cosine" else "")
            lines += [f"Budget check: {why}the plateau is the budget at which twice the rounds"
                      f"{' (the rate decaying over all of them)' if why else ''} no longer help:", "",
                      *budget_table(groups, rounds), ""]
        if mode == "failure":
            lines += ["Equal compute (paired by seed, 95% t interval, verdicts Holm-corrected over the table; training "
                      "tokens more than 1 % apart are said after the verdict):", "",
                      *equal_compute_table(sel, rounds, lr), ""]
        if mode == "calibrate":  # what drift costs: the runs built to drift against FedAvg's as many local steps
            drift = [(p, a, "FedAvg") for p, a, _ in arms("calibrate", rounds, lr=lr)
                     if a.startswith(f"FedAvg, {8 * LOCAL_STEPS} local steps")]
            lines += ["The runs built to drift against FedAvg on the same shards, trained for about as many local "
                      "steps (paired by seed, 95% t interval, Holm over the table):", "",
                      *equal_compute_table(runs, rounds, lr, drift), ""]
    lines += ["### Does the split hurt", "", "Each arm on a non-iid partition against the same arm on iid shards "
              "(global validation perplexity, paired by seed, 95% t interval, verdicts Holm-corrected over the table):",
              "", *split_table(groups, rounds), ""]
    if compare_dir is not None:
        own, other = (runs, rounds, record), load_grid(compare_dir)
        grids = {"from scratch": other, "pretrained + LoRA": own} if "mu" in chosen else \
            {"from scratch": own, "pretrained + LoRA": other}
        mus = setting_of(grids["pretrained + LoRA"][2]).get("mu")
        md, pct = side_by_side(grids, mus)
        if write:
            draw_side_by_side(pct, out_dir / "figures" / "side_by_side.png")
        lines += ["### Side by side: the headline arms in both regimes", "",
                  f"FedProx at the mu the pretrained regime's selection chose ({mus}), in both regimes. "
                  "Figure: `figures/side_by_side.png`.", "", *md, ""]
    lines += ["### Failure detectors", "", *detector_table(runs, rounds, lr), "",
              f"Figures: `python {' '.join(figure_command(out_dir))}` (in figures/).", ""]
    text = "\n".join(lines) + "\n"
    if write:
        (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def figure_command(out_dir: Path) -> list[str]:
    """The figures' command after ``python`` (``plots/plot_llm_noniid.py`` on the grid's runs, labelled by its
    arms.json, into <out-dir>/figures): the report names it, ``--mode analyze`` prints it."""
    return ["plots/plot_llm_noniid.py", "--runs", str(out_dir / "runs"), "--out", str(out_dir / "figures"),
            "--arms", str(out_dir / ARMS_FILE)]

