"""The README blocks of mamba_fl's synthetic-text grid (run_grid.py), generated from its committed records;
``mamba_fl/results.py`` lists them with the real-text blocks (``python -m common.results --write`` rewrites them).

Records: ``RECORDS/<arm>_L<layers>_<shard>_s<seed>`` (args.json, summary.json, metrics.jsonl; a central run's shard
is "synthetic"), copied by ``run_grid.py --records``. A run's value is its final validation perplexity per token:
every run ends at a constant rate, after the fixed budget run_grid.py gives it. The study (``SYNTHETIC``, declared by
``studies.synthetic_study``, its arms run_grid.py's plan) has three Holm families, each spanning the tables its
conclusion is drawn across:

- "gap": central and central-b4 minus FedAvg at 1 and 2 layers on both shards, and central minus FedAvg with the
  longer budget (how much of federation's gap FedAvg's fewer sequential updates account for);
- "aggregators": FedFisher, FedEntropy and both server-momentum forms minus FedAvg at 1 and 2 layers on both
  shards, and FedFisher with the longer budget (does any aggregator beat FedAvg);
- "client optimizer": FedAvg's variants (fresh AdamW, plain SGD, 8 local steps) minus FedAvg.

An arm whose every seed ends above the unigram has learned less than token frequencies: it is reported as such and
not compared (its comparison leaves its family). Compute: equal samples (``Study.compute``), the training sequences
of each run's summary; central-b4 also takes FedAvg's number of sequential updates (its optimizer steps are FedAvg's
rounds).
"""
from __future__ import annotations

import math
import re
from functools import cache

from common import plateau, stats, study_report
from common import results as RS
from mamba_fl import run_grid
from mamba_fl.studies import (
    AGGREGATORS,
    LAYERS,
    LONG,
    SHARDS,
    SYNTHETIC_PLATEAU,
    VARIANTS,
    synthetic_name,
    synthetic_study,
)

RECORDS = "mamba_fl/results/synthetic_grid/runs"
DEFAULTS = run_grid.get_args_parser().parse_args([])  # the grid the records come from: run_grid.py's defaults
LABELS = {"central": "central", "central-b4": "central, 4x batch", "fedavg": "FedAvg",
          "fedfisher": "FedFisher", "fedentropy": f"FedEntropy (T = {DEFAULTS.temperature:g})",
          "fedmom-ema": "FedMomentum EMA (the source's form)", "fedavgm": "FedAvgM heavy ball (Flower's form)",
          "fedavg-reset": "FedAvg, fresh AdamW every round", "fedavg-sgd": "FedAvg, plain local SGD",
          "fedavg-lu8": "FedAvg, 8 local steps a round", "central-long": "central, longer budget",
          "fedavg-long": "FedAvg, longer budget", "fedfisher-long": "FedFisher, longer budget"}
SYNTHETIC = synthetic_study(run_grid.grid_plan(DEFAULTS), DEFAULTS.seeds)  # its arms: the grid's plan


# ------------------------------------------------------------------------------------------------ records
@cache
def grid() -> dict[str, list[dict]]:
    """{arm (``synthetic_name``): its finished runs} of the committed records (or what ``--records`` puts in their
    place)."""
    out: dict[str, list[dict]] = {}
    for r in RS.records(RECORDS, "*_L*_s*"):
        out.setdefault(r["name"].rsplit("_s", 1)[0], []).append(r)
    return out


def runs(arm: str) -> list[dict]:
    return grid().get(arm, [])


def finals(arm: str, key: str = "final_val_ppl") -> dict:
    """{seed: summary[key]} of the arm's runs that ended at a finite value."""
    return {s: v for s, v in RS.by_seed(runs(arm), key).items() if math.isfinite(v)}


def above_unigram(arm: str) -> int:
    """How many of the arm's runs ended at or above their unigram perplexity (or not at a finite value)."""
    return sum(not r["summary"].get("final_val_ppl", math.inf) < r["summary"]["unigram_ppl"] for r in runs(arm))


def values(arm: str, metric: str = "") -> dict:
    """{seed: final validation perplexity} per token (``metric`` ""), per word ("word")."""
    return finals(arm, "final_val_ppl_word" if metric == "word" else "final_val_ppl")


def failed() -> dict[str, str]:
    """{arm: 'not compared (k/n end above the unigram)'} of the arms whose every run ended above the unigram: they
    leave their comparisons' families (``study_report`` ``skip``)."""
    return {a: f"not compared ({above_unigram(a)}/{len(rs)} end above the unigram)" for a, rs in grid().items()
            if above_unigram(a) == len(rs)}


def compared(arm: str, metric: str = "") -> dict:
    """``values`` of an arm that is compared, {} of a failed one."""
    return {} if arm in failed() else values(arm, metric)


def sequences(arm: str, _: str = "") -> dict:
    """{seed: training sequences} of the arm's runs: the compute the study's arms share."""
    return {r["args"]["seed"]: r["summary"]["train_tokens"] / r["args"]["sequence_length"] for r in runs(arm)
            if r["summary"].get("train_tokens") is not None}


def plateau_note(arm: str) -> str | None:
    """'k/n still improving' (``PLATEAU`` from each run's metrics.jsonl), None when every run is at its plateau."""
    return plateau.arm_note(SYNTHETIC_PLATEAU, {r["args"]["seed"]: r["path"] for r in runs(arm)})


def notes(arm: str, _: str = "") -> list[str]:
    """What a reader must know of the arm's runs beside a verdict: its plateau, its runs above the unigram."""
    high = above_unigram(arm)
    return [n for n in (plateau_note(arm), f"{high}/{len(runs(arm))} end above the unigram" if high else None) if n]


@cache
def findings() -> dict[tuple[str, str], study_report.Finding]:
    """{(arm, reference): Finding} of every comparison of ``SYNTHETIC`` with values on both sides."""
    found = study_report.compare(SYNTHETIC, compared, notes, spent=sequences)
    return {(c.arm, c.reference): f for c, f in found.items()}


def family_size(family: str) -> int:
    """How many of ``family``'s comparisons were made (both arms compared, at least 2 paired seeds): its "over m"."""
    return sum(1 for c in SYNTHETIC.families()[family] if (c.arm, c.reference) in findings()
               and findings()[c.arm, c.reference].paired.n >= 2)


# ------------------------------------------------------------------------------------------------- words
def minus(text: str) -> str:
    """Prose's minus sign (U+2212) for a negative number ('-1.7', '[-2.2'; not 'central-b4')."""
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def said(arm: str, ref: str) -> str:
    """The comparison's clause with its warnings; 'not compared (k/n end above the unigram)' for a failed arm (or
    reference), '–' where either has no runs."""
    if (arm, ref) in findings():
        return minus(study_report.said(findings()[arm, ref]))
    if not runs(arm) or not runs(ref):
        return "–"
    return failed().get(arm) or f"not compared (FedAvg: {failed()[ref].split('(', 1)[1]}"


def mean_sd(arm: str, key: str = "final_val_ppl") -> str:
    s = stats.summarize(finals(arm, key).values())
    return "–" if s.n == 0 else f"{s.mean:.1f}" if s.n == 1 else f"{s.mean:.1f} ± {s.sd:.1f}"


def share(layers: int, shard: str) -> float:
    """How much of central − FedAvg the fewer sequential updates account for, at least (0 to 1): from the
    simultaneous interval (over the gap family) of what they leave, FedAvg − central-b4 (``common.stats.explained``)."""
    fed, central, b4 = (compared(synthetic_name(a, layers, shard)) for a in ("fedavg", "central", "central-b4"))
    return stats.explained(stats.paired(fed, b4), stats.paired(fed, central).mean, family_size("gap"))


def accounted(layers: int) -> str:
    """The sentence of ``share`` on both shards: 'The fewer sequential updates account for all of the gap on
    contiguous shards and at least 19 % of it on topic shards; how much on ... is not resolved'."""
    parts = {s: share(layers, s) for s in SHARDS}
    said_ = [("all of the gap" if v >= 1 else f"at least {100 * v:.0f} % of the gap") + f" on {s} shards"
             for s, v in parts.items() if v > 0]
    open_ = [s for s, v in parts.items() if v <= 0]
    text = ("The fewer sequential updates account for " + " and ".join(said_)) if said_ else ""
    if open_:
        text += ("; how much" if text else "How much of the gap the fewer sequential updates account for") + \
            f" on {' and '.join(open_)} shards is not resolved (what they leave reaches the whole gap)"
    return text + "."


def first(arm: str, key: str):
    """The summary value ``key`` of the arm's first run (a setting every seed shares)."""
    return runs(arm)[0]["summary"][key]


def setup() -> dict:
    """What the sentences state of the setting, read from the records: steps, batches, sequences per arm."""
    fed, central, b4 = (synthetic_name(a, 1, "contiguous") for a in ("fedavg", "central", "central-b4"))
    seq = {a: stats.summarize(sequences(a).values()).mean for a in (fed, central, b4)}
    args = runs(fed)[0]["args"]
    return {"rounds": first(fed, "rounds_done"), "clients": args["num_clients"], "batch": args["batch_size"],
            "steps": first(central, "steps_done"), "b4_steps": first(b4, "steps_done"),
            "b4_batch": runs(b4)[0]["args"]["batch_size"], "seq": seq, "fed": fed, "central": central, "b4": b4}


# ------------------------------------------------------------------------------------------------ blocks
def synthetic_table() -> str:
    """The headline: 1 layer, contiguous and topic shards, central, central-b4 and FedAvg, and the differences."""
    k = setup()
    times = f"{k['b4_batch'] // k['batch']}x"
    rows = [[f"central ({k['steps']} steps of {k['batch']} blocks)", *(warned("central", 1, s) for s in SHARDS)],
            [f"central, {times} batch ({k['b4_steps']} steps of {k['b4_batch']} blocks: FedAvg's sequential updates)",
             *(warned("central-b4", 1, s) for s in SHARDS)],
            [f"FedAvg ({k['rounds']} rounds of {k['clients']} clients' {k['batch']}-block steps)",
             *(warned("fedavg", 1, s) for s in SHARDS)]]
    for arm, label in (("central", "central − FedAvg"), ("central-b4", f"central, {times} batch − FedAvg"),
                       ("fedfisher", "FedFisher − FedAvg")):
        rows.append([label, *(cell(synthetic_name(arm, 1, s), synthetic_name("fedavg", 1, s)) for s in SHARDS)])
    run = runs(k["fed"])[0]["summary"]
    seq = {a: f"{v:,.0f}" for a, v in k["seq"].items()}
    full = k["b4_steps"] * k["b4_batch"]  # what central-b4's steps would take were every batch full
    partial = f" ({k['b4_steps']} full batches would be {full:,}: the last batch of each of its epochs is partial)" \
        if k["seq"][k["b4"]] < full else ""
    return "\n".join([*stats.markdown(["1 layer", "contiguous shards", "topic shards (one topic a client)"], rows), "",
                      f"Final validation perplexity per token (all {run['eval_blocks']} validation blocks), mean ± "
                      f"sample sd over {len(runs(k['fed']))} seeds; a difference is paired by seed with its 95 % "
                      f"interval, Holm over the family of the study it belongs to: central and central-b4 over the "
                      f"{family_size('gap')} comparisons of the gap (1 and 2 layers, both shards, the longer budget), "
                      f"FedFisher over the {family_size('aggregators')} aggregator comparisons. Reference points: "
                      f"unigram {run['unigram_ppl']:.1f} / token ({run['unigram_ppl_word']:.1f} / word), uniform "
                      f"{run['uniform_ppl']:.0f} / token, the source's optimum {run['optimal_ppl_word']:.2f} / word. "
                      f"Compute: equal samples, FedAvg {seq[k['fed']]} training sequences, central {seq[k['central']]}"
                      f", central-b4 {seq[k['b4']]}{partial}; compute apart by more than "
                      f"{100 * study_report.MATCHED:.0f} % is marked. k/n still improving: k of the n "
                      "runs had their best evaluation last, at a constant rate; they are not shown to be at a "
                      "plateau."])


def cell(arm: str, ref: str) -> str:
    """A table's comparison cell: the claim with its warnings after it (``study_report.warned``)."""
    f = findings().get((arm, ref))
    return minus(study_report.warned(f.claim, f.warnings)) if f else said(arm, ref)


def warned(arm: str, layers: int, shard: str) -> str:
    """An arm's cell: mean ± sd with its notes (its plateau, its runs above the unigram)."""
    key = synthetic_name(arm, layers, shard)
    return study_report.warned(mean_sd(key), notes(key))


def synthetic_gap() -> str:
    """Federation's gap to central at equal samples, what FedAvg's fewer sequential updates account for of it, at 1
    and 2 layers, and with the longer budget."""
    m = family_size("gap")
    parts = []
    for L in LAYERS:
        gap = " and ".join(f"{said(synthetic_name('central', L, s), synthetic_name('fedavg', L, s))} ({s})"
                           for s in SHARDS)
        b4 = " and ".join(f"{said(synthetic_name('central-b4', L, s), synthetic_name('fedavg', L, s))} ({s})"
                          for s in SHARDS)
        fed = " and ".join(f"{mean_sd(synthetic_name('fedavg', L, s))} ({s})" for s in SHARDS)
        parts.append(
            f"{L} layer{'s' if L > 1 else ''}: FedAvg ends at {fed} against central's "
            f"{mean_sd(synthetic_name('central', L, ''))} and central-b4's "
            f"{mean_sd(synthetic_name('central-b4', L, ''))}; central − FedAvg {gap}; central-b4 − FedAvg "
            f"{b4}. {accounted(L)}")
    long = runs(LONG[1])
    factor = round(long[0]["summary"]["rounds_done"] / first(synthetic_name("fedavg", 1, "topic"), "rounds_done")) \
        if long else DEFAULTS.long_factor
    parts.append(f"With {factor}x the rounds (1 layer, topic shards): central {mean_sd(LONG[0])}, FedAvg "
                 f"{mean_sd(LONG[1])}, central − FedAvg {said(LONG[0], LONG[1])}.")
    base = {a: plateau_note(a) or "at its plateau"
            for a in (synthetic_name("fedavg", L, s) for L in LAYERS for s in SHARDS)}
    states = set(base.values())
    own = "FedAvg's runs, the reference: " + (
        f"{states.pop()} at both depths on both shards" if len(states) == 1 else
        "; ".join(f"{n} at {where(a)}" for a, n in base.items())) + \
        f", {plateau_note(LONG[1]) or 'at its plateau'} with the longer budget"
    return minus(f"Gap to central at equal samples, Holm over the study's {m} gap comparisons (the share accounted "
                 f"for: 1 − the end of the simultaneous interval of FedAvg − central-b4 over the {m}, divided by the "
                 f"gap; {own}). " + " ".join(parts))


def comparisons(rows, columns: list[tuple[str, str, str]], header: str) -> list[str]:
    """A table of ``rows`` (arm kinds: "fedfisher") against FedAvg through ``common.study_report.table``, one column
    per (header, the compared arm's name with "{}" for the kind, reference arm): each cell the declared comparison
    over its family with its warnings after it, '–' where the study declares none."""
    def column(head: str, arm: str, ref: str) -> study_report.Delta:
        return study_report.Delta(head, reference=ref, of=arm.format)

    return study_report.table(SYNTHETIC, values, [study_report.Text(header, lambda kind: LABELS[kind]),
                                                  *(column(*c) for c in columns)], rows=list(rows), notes=notes,
                              spent=sequences, skip=failed())


def synthetic_arms() -> str:
    """Every aggregator and FedAvg variant against FedAvg, Holm over its family, and the verdict across them."""
    settings = [(f"{L} layer{'s' if L > 1 else ''}, {s}", f"{{}}_L{L}_{s}", synthetic_name("fedavg", L, s))
                for L in LAYERS for s in SHARDS]
    longer = ("1 layer, topic, longer budget", "{}-long_L1_topic", LONG[1])
    better = below_fedavg()
    return minus("\n".join([
        *comparisons(AGGREGATORS, [*settings, longer], "− FedAvg"), "",
        f"Holm over the study's {family_size('aggregators')} aggregator comparisons (the table); "
        + (f"below FedAvg after it: {'; '.join(better)}." if better else "none is below FedAvg after it.")
        + " An arm whose every seed ends above the unigram is not compared.", "",
        *comparisons(VARIANTS, [("− FedAvg", "{}_L1_contiguous", synthetic_name("fedavg", 1, "contiguous"))],
                     "1 layer, contiguous shards"), "",
        f"The client optimizer and local work: Holm over these {family_size('client optimizer')}."]))


def study_synthetic() -> str:
    """The top README's line for the synthetic grid."""
    k = setup()
    line = {a: " and ".join(f"{said(synthetic_name(a, 1, s), synthetic_name('fedavg', 1, s))} ({s})" for s in SHARDS)
            for a in ("central", "central-b4", "fedfisher")}
    better = below_fedavg()
    return minus(f"1 layer, equal samples ({k['seq'][k['fed']]:,.0f} training sequences): central − FedAvg "
                 f"{line['central']}; central with FedAvg's {k['rounds']} sequential updates − FedAvg "
                 f"{line['central-b4']}; FedFisher − FedAvg {line['fedfisher']}; "
                 f"{len(better) or 'none'} of the {family_size('aggregators')} aggregator comparisons below FedAvg "
                 "after Holm" + (f" ({', '.join(better)})" if better else ""))


def below_fedavg() -> list[str]:
    """The aggregator comparisons below FedAvg after Holm over their family, as 'FedFisher at 1 layer on topic
    shards'."""
    return [f"{LABELS[c.arm.split('_')[0].removesuffix('-long')]} at {where(c.arm)}"
            for c in SYNTHETIC.families()["aggregators"]
            if (f := findings().get((c.arm, c.reference))) and "p_Holm" in f.claim and f.paired.mean < 0]


def where(arm: str) -> str:
    """'1 layer on topic shards' of an arm's name (``synthetic_name``), '..., longer budget' of a longer-budget arm."""
    kind, layers, shard = arm.split("_")
    depth = f"{layers[1:]} layer{'s' if layers != 'L1' else ''}"
    return (depth if shard == "synthetic" else f"{depth} on {shard} shards") + \
        (", longer budget" if kind.endswith("-long") else "")


# ------------------------------------------------------------------------------------ the full tables
TABLE_ARMS = ("central", "central-b4", "fedavg", "fedavgm", "fedmom-ema", "fedentropy", "fedfisher")


def diagnostics(arm: str) -> str:
    """A table's notes: runs above the unigram; FedEntropy's max/min client weight and FedFisher's floor share at the
    last round (metrics.jsonl)."""
    out, group = [], runs(arm)
    if high := above_unigram(arm):
        out.append(f"{high}/{len(group)} end above the unigram")
    return "; ".join(out + last_round_notes(group))


def last_round_notes(runs: list[dict]) -> list[str]:
    """FedEntropy's max/min client weight per seed and FedFisher's floor share (mean over seeds) at the last round
    of ``runs`` (their metrics.jsonl), where the arm logs them."""
    out = []
    last = lambda key: [c[-1] for r in runs if (c := plateau.curve(r["path"], key))]  # noqa: E731
    if ratios := last("entropy_weight_ratio"):
        out.append(f"max/min weight {', '.join(f'{v:.3g}' for v in ratios)} (last round, per seed)")
    if shares := last("fisher_eps_share"):
        out.append(f"floor decides {100 * sum(shares) / len(shares):.1f} % of coordinates (last round)")
    return out


def full_table(arms: list[str], ref: str) -> list[str]:
    """One table (``common.study_report.table``): every arm of ``arms`` with runs, its perplexity per token and per
    word, its declared comparison to ``ref`` over its family (the warnings other than the columns': seeds, compute),
    plateau, training sequences, notes."""
    def state(arm: str) -> str:
        return "–" if arm in failed() else plateau_note(arm) or "at plateau"  # a failed arm has no plateau

    columns = [study_report.Text("arm", lambda a: LABELS[a.split("_")[0]] + (" (the reference)" if a == ref else "")),
               study_report.Value("final ppl / token"), study_report.Value("final ppl / word", "word"),
               study_report.Delta("− FedAvg [95% CI], Holm over its family", reference=ref),
               study_report.Text("plateau (the rule)", state),
               study_report.Text("training sequences", lambda a: f"{stats.summarize(sequences(a).values()).mean:,.0f}"),
               study_report.Text("notes", diagnostics)]
    return study_report.table(SYNTHETIC, values, columns, rows=[a for a in arms if runs(a)], spent=sequences,
                              skip=failed())


def synthetic_tables() -> str:
    """Every table of the grid: each depth and shard, FedAvg's variants, the longer budget."""
    fed = synthetic_name("fedavg", 1, "contiguous")
    tables = [*((f"{L} layer{'s' if L > 1 else ''}, {s} shards", [synthetic_name(a, L, s) for a in TABLE_ARMS],
                 synthetic_name("fedavg", L, s)) for L in LAYERS for s in SHARDS),
              ("FedAvg's client optimizer and local work (1 layer, contiguous shards)",
               [synthetic_name("central", 1, ""), fed, *(synthetic_name(a, 1, "contiguous") for a in VARIANTS)], fed),
              (f"Longer budget ({DEFAULTS.long_factor}x the rounds; 1 layer, topic shards)", list(LONG), LONG[1])]
    out = []
    for title, arms, ref in tables:
        if any(runs(a) for a in arms):  # a grid still running: the tables with runs so far
            out += [f"**{title}**", "", *full_table(arms, ref), ""]
    out += ["Families (Holm): " + "; ".join(f"{fam}, {family_size(fam)} comparisons" for fam in SYNTHETIC.families())
            + f". Plateau: {SYNTHETIC_PLATEAU.rule}."]
    return minus("\n".join(out))


# ------------------------------------------------------------------------------------------- wall time
# the grid command's own first line ("mamba_fl grid: 90 runs: 18 done before, 72 to run") and /usr/bin/time -v's
# report of that command, as its log ends
TIME = "mamba_fl/results/synthetic_grid/time.txt"


def synthetic_time() -> str:
    """The grid's cost: the runs' own clocks and load averages (summary.json), /usr/bin/time's report of the command
    that ran them (``TIME``; the runs done before it by an earlier command are named), and its records' size."""
    group = [r["summary"] for rs in grid().values() for r in rs]
    wall, cpu = (sum(s[k] for s in group) / 60 for k in ("wall_seconds", "cpu_seconds"))
    loads = [s[k] for s in group for k in ("load_start", "load_end")]
    text = RS.path(TIME).read_text(encoding="utf-8")
    report = dict(line.strip().rsplit(": ", 1) for line in text.splitlines() if line.startswith("\t"))
    clock = [float(x) for x in report["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")]
    minutes = sum(x * 60 ** (len(clock) - 2 - i) for i, x in enumerate(clock))
    before, ran = (int(x) for x in re.search(r"(\d+) done before, (\d+) to run", text).groups())
    jobs = re.search(r"--jobs[ =](\d+)", report["Command being timed"])
    files = [f for f in RS.path(RECORDS).rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files) / 1e6
    return (f"{len(group)} runs, one thread each: their own clocks (summary.json) add up to {wall:.1f} min of wall "
            f"time and {cpu:.1f} min of CPU, the 1-minute load average {RS.range_of(loads, 2, '–')} at their starts "
            f"and ends. The command that ran {f'the last {ran} of them ({before} done before it)' if before else ran}"
            f"{f', {jobs[1]} at a time,' if jobs else ''} took {minutes:.1f} min (`/usr/bin/time -v`: "
            f"{report['Percent of CPU this job got']} CPU; {TIME.rsplit('/', 1)[1]}). Their records: {len(files)} "
            f"files, {size:.1f} MB")


BLOCKS = {"synthetic-table": synthetic_table, "synthetic-gap": synthetic_gap, "synthetic-arms": synthetic_arms,
          "synthetic-tables": synthetic_tables, "synthetic-time": synthetic_time, "study-synthetic": study_synthetic}
