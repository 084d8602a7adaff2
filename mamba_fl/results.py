"""The README blocks of mamba_fl's results, generated from the committed records of real_grid.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs), and those of the synthetic
grid (run_grid.py's records: ``mamba_fl/results_synthetic.py``, listed here).

Records: ``RECORDS/runs/<arm>_L<layers>_<shard>_k<K>m<M>_plateau_s<seed>`` (args.json, summary.json), the
headline's d_model-32 grid, and ``SOURCE/runs/...`` the same grid at the source's d_model 512. Each table's
comparisons to FedAvg are one Holm family, as in plots/plot_mamba.py's results_real.md; a sentence that draws a
conclusion across tables names the family that spans them (``FISHER_FAMILY``).
"""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from common import plateau, stats, study, study_report
from common import results as RS
from common.errors import check
from mamba_fl import results_synthetic
from mamba_fl.real_grid import FEDERATED

RECORDS = "mamba_fl/results/real"          # the d_model-32 real-text grid
SOURCE = "mamba_fl/results/real_source"    # the same grid at the source's size (one GPU)
BUDGET_PASSES = 4  # real_grid.py's --budget-epochs default: the equal-compute point is 4 passes over the blocks
ARMS = ("central", "central-b4", "fedavg", "fedfisher", "fedfisher-local", "fedentropy", "fedavgm")
LABELS = {"central": "central (AdamW, batch 16)", "central-b4": "central, 4x batch (FedAvg's sequential updates)",
          "fedavg": "FedAvg (client AdamW, moments kept)", "fedfisher": "FedFisher (per-example Fisher)",
          "fedfisher-local": "FedFisher (--fisher-method local)", "fedentropy": "FedEntropy",
          "fedavgm": "FedAvgM (heavy ball)"}


def grid(folder: str) -> dict:
    """{(layers, shard, clients): {arm: [runs]}} of a real-text record folder (or what ``--records`` puts in its
    place)."""
    return _grid(RS.path(f"{folder}/runs"))


@cache
def _grid(where: Path) -> dict:
    out: dict = {}
    for r in RS.records(where, "*_L*_plateau_s*"):
        arm, layers, shard, clients, *_ = r["name"].split("_")
        out.setdefault((int(layers[1:]), shard, clients), {}).setdefault(arm, []).append(r)
    return {k: {a: v[a] for a in ARMS if a in v} for k, v in sorted(out.items())}


KEYS = {"": "test_ppl", "word": "test_ppl_word", "val": "best_val_ppl"}


def values(runs: list[dict], metric: str) -> dict:
    """{seed: value} of ``metric``: "<stage>" the test perplexity per token, "<stage> word" per word, "<stage> val"
    the best validation perplexity per token; at the plateau (stage "plateau") or at equal compute ("budget": the
    summary's budget_* values)."""
    stage, _, what = metric.partition(" ")
    key = KEYS[what] if stage == "plateau" else f"budget_{KEYS[what]}"
    return {r["args"]["seed"]: r["summary"][key] for r in runs if r["summary"].get(key) is not None}


def short(d: stats.Paired, claim: str) -> str:
    """A table cell: the interval, and the verdict only where it is not 'no difference'."""
    cell = f"{d.mean:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]"
    if d.n >= 2 and "no difference" not in claim:
        cell += ", " + claim.split("; ", 1)[1].rstrip(")")
    return minus(cell)


def minus(text: str) -> str:
    """Prose's minus sign (U+2212) for a negative number ('-1.7' and '[-2.2', not '6.2-7.2' or 'central-b4')."""
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def cell(runs: list[dict], stage: str) -> str:
    s = stats.summarize(values(runs, stage).values())
    return f"{s.mean:.1f} ± {s.sd:.1f}" + (f" (n={s.n})" if s.n != 5 else "")


def passes(runs: list[dict]) -> str:
    """The passes over the training blocks at which the plateau rule stopped each run (min-max)."""
    return RS.range_of(BUDGET_PASSES * r["summary"]["stopped_at"] / r["summary"]["budget_at"] for r in runs)


def _arm(arm: str, setting: tuple) -> str:
    """An arm of one setting, named as its runs are less ``_plateau_s<seed>``: ``fedavg_L1_contiguous_k4m4``."""
    layers, shard, clients = setting
    return f"{arm}_L{layers}_{shard}_{clients}"


def _runs(name: str, folder: str = RECORDS) -> list[dict]:
    """The committed runs of ``_arm``'s ``name`` in ``folder`` (none when the grid lacks them)."""
    arm, layers, shard, clients = name.split("_")
    return grid(folder).get((int(layers[1:]), shard, clients), {}).get(arm, [])


def _script(arm: str) -> tuple[str, tuple[str, ...]]:
    script, flags = ("central.py", []) if arm.startswith("central") else FEDERATED[arm]
    return f"mamba_fl.{script[:-3]}", (*flags, *(("--batch-size", "64") if arm == "central-b4" else ()))


STAGES = ("plateau", "budget")
# real_grid.py stops a run at a constant rate after a pass without a 1 % gain: a run whose best validation point is
# its last evaluation was stopped while still improving (not shown to be at a plateau)
PLATEAU = plateau.Plateau("the best validation perplexity is not the last evaluation", metric="val_ppl",
                          direction="min", schedule="constant")
# the headline study (real_table): every arm against FedAvg at 1 and 2 layers, 4 clients on contiguous shards, at
# the plateau and at equal compute; each (depth, stage) table is one Holm family, as in results_real.md
HEADLINE = ((1, "contiguous", "k4m4"), (2, "contiguous", "k4m4"))
REAL = study.Study(
    "real", arms=tuple(study.Arm(_arm(a, k), *_script(a)) for k in HEADLINE for a in ARMS), seeds=(0, 1, 2, 3, 4),
    comparisons=tuple(study.Comparison(_arm(a, k), _arm("fedavg", k), f"{k[0]} layer(s), {stage}", stage)
                      for k in HEADLINE for stage in STAGES for a in ARMS if a != "fedavg"))
# FedFisher − FedAvg in every setting of the grid, at the plateau and at equal compute: one family, the one a
# conclusion across its tables needs (harder_table, study_real)
SETTINGS = (*HEADLINE, (1, "topic", "k4m4"), (1, "contiguous", "k16m4"), (4, "contiguous", "k4m4"))
FISHER = study.Study(
    "fedfisher", arms=tuple(study.Arm(_arm(a, k), *_script(a)) for k in SETTINGS for a in ("fedavg", "fedfisher")),
    seeds=(0, 1, 2, 3, 4), comparisons=tuple(study.Comparison(_arm("fedfisher", k), _arm("fedavg", k), "grid", stage)
                                             for k in SETTINGS for stage in STAGES))


def table_study(folder: str, setting: tuple) -> study.Study:
    """One table of a record folder as a study: every arm of ``setting`` against FedAvg, at the plateau and at
    equal compute, each stage one Holm family (plots/plot_mamba.py's results_real.md)."""
    arms = grid(folder).get(setting, {})
    seeds = sorted({r["args"]["seed"] for runs in arms.values() for r in runs})
    return study.Study(f"{folder} {_arm('', setting)}", arms=tuple(study.Arm(_arm(a, setting), *_script(a))
                                                                   for a in arms), seeds=tuple(seeds),
                       plateau=PLATEAU, comparisons=tuple(
                           study.Comparison(_arm(a, setting), _arm("fedavg", setting), f"{setting}, {stage}", stage)
                           for stage in STAGES for a in arms if a != "fedavg"))


def table(folder: str, setting: tuple) -> dict:
    """{(arm, stage): Finding} of ``table_study`` through ``common.study_report``, with each arm's notes; an arm
    whose every run ends at or above the test unigram (``unlearned``) is compared with nothing."""
    return _table(RS.path(folder), folder, setting)


@cache
def _table(where: Path, folder: str, setting: tuple) -> dict:
    found = study_report.compare(table_study(folder, setting), compared(folder, setting),
                                 lambda n, stage: real_notes(n, stage, folder))
    return {(c.arm.split("_")[0], c.metric): f for c, f in found.items()}


def unlearned(folder: str, setting: tuple) -> dict[str, str]:
    """{arm name: 'not compared (...)'} of the arms of ``setting`` whose every run ends at or above its test
    unigram (or did not complete): they learned less than token frequencies and leave their table's family."""
    return {_arm(a, setting): "not compared (every seed at or above the test unigram)"
            for a, runs in grid(folder).get(setting, {}).items()
            if all(r["summary"].get("status", "complete") != "complete"
                   or not r["summary"]["test_ppl"] < r["summary"]["test_unigram_ppl"] for r in runs)}


def compared(folder: str, setting: tuple):
    """``values`` of the arms of one table by name (``_arm``), {} of an ``unlearned`` one."""
    skip = unlearned(folder, setting)
    return lambda name, metric: {} if name in skip else values(_runs(name, folder), metric)


def selection_notes(folder: str = RECORDS) -> dict:
    """{arm: 'lr at the high edge of its grid'} for each arm whose chosen setting (selection.json, beside the runs)
    is at an edge of the candidates it tried."""
    return _selection_notes(RS.path(folder) / "selection.json")


@cache
def _selection_notes(path: Path) -> dict:
    check(path.is_file(), f"{path}: no such file (real_grid.py writes the selection beside runs/ in its out-dir)")
    record = json.loads(path.read_text(encoding="utf-8"))
    notes = {arm: study_report.edge_note(record["scores"][arm], value, flag[2:])
             for arm, choice in record["chosen"].items() for flag, value in choice.items()}
    return {arm: note for arm, note in notes.items() if note}


def real_notes(name: str, stage: str, folder: str = RECORDS) -> list[str]:
    """What a reader must know of arm ``name``'s runs beside its verdict: at the plateau, the runs whose best
    evaluation was their last (``PLATEAU`` from their metrics.jsonl: stopped by the rule while still improving);
    its selection at an edge."""
    short = plateau.arm_note(PLATEAU, {r["args"]["seed"]: r["path"] for r in _runs(name, folder)}) \
        if stage == "plateau" else None
    return [n for n in (short, selection_notes(folder).get(name.split("_")[0])) if n]


def _values(name: str, stage: str) -> dict:
    return values(_runs(name), stage)


def real_table() -> str:
    """The headline table: 1 and 2 layers, 4 clients on contiguous shards, at the plateau and at equal compute
    (``REAL``'s comparisons through ``common.study_report``: each verdict with its warnings)."""
    found = {(c.arm, c.metric): f for c, f in study_report.compare(REAL, _values, real_notes).items()}

    def verdict(name: str, stage: str) -> str:
        if name.startswith("fedavg_"):
            return minus(study_report.warned("reference", real_notes(name, stage)))
        if (name, stage) not in found:  # FedAvg has no runs here
            return "–"
        d, claim, warnings = found[name, stage]
        return study_report.warned(short(d, claim), warnings)

    rows = [[k[0], LABELS[arm], cell(g, "plateau"), verdict(_arm(arm, k), "plateau"), passes(g), cell(g, "budget"),
             verdict(_arm(arm, k), "budget")] for k, arms in grid(RECORDS).items() if k in HEADLINE
            for arm, g in arms.items()]
    table = stats.markdown(["layers", "arm", "at the plateau", "− FedAvg [95% CI]", "passes at the stop",
                            f"at equal compute ({BUDGET_PASSES} passes)", "− FedAvg [95% CI]"], rows)
    return "\n".join([*table, "", "k/n still improving: k of the arm's n runs had their best validation point at "
                       "their last evaluation, where the rule stopped them; they are not shown to be at a plateau."])


def fisher_family() -> dict:
    """{(setting, stage): Finding}: every FedFisher − FedAvg comparison of the d_model-32 grid (each setting, at the
    plateau and at equal compute) corrected together, ``FISHER``'s family, with FedFisher's notes."""
    found = {(c.arm, c.metric): f for c, f in study_report.compare(FISHER, _values, real_notes).items()}
    return {(k, stage): f for k in sorted(SETTINGS) for stage in STAGES
            for f in [found.get((_arm("fedfisher", k), stage))] if f}


def said(f: study_report.Finding) -> str:
    """A sentence's clause: the claim with its warnings, in prose's minus signs."""
    return minus(study_report.said(f))


def setting_name(layers: int, shard: str, clients: str) -> str:
    k, m = clients[1:].split("m")
    who = f"{k} clients" if k == m else f"{k} clients, {m} a round"
    return f"{who}, {shard} shards" + (f", {layers} layers" if layers > 1 else "")


def harder_table() -> str:
    """FedFisher − FedAvg at 1 layer where the clients differ more, with Holm over each table (one comparison
    for the topic and 16-client settings) and over all of the grid's FedFisher − FedAvg comparisons."""
    fam, rows = fisher_family(), []
    for setting, arms in grid(RECORDS).items():
        if setting[0] != 1 or "fedfisher" not in arms:
            continue
        found = table(RECORDS, setting)
        verdict = {stage: study_report.warned(short(found["fedfisher", stage].paired, found["fedfisher", stage].claim),
                                              found["fedfisher", stage].warnings) for stage in STAGES}
        rows.append([setting_name(*setting), cell(arms["fedavg"], "plateau"), verdict["plateau"],
                     cell(arms["fedavg"], "budget"), verdict["budget"]])
    m = len(fam)
    across = [f"{setting_name(*k)} {'at equal compute' if stage == 'budget' else 'at the plateau'} {said(f)}"
              for (k, stage), f in fam.items() if "p_Holm" in f.claim and "no difference" not in f.claim]
    lines = stats.markdown(["setting", "FedAvg at the plateau", "FedFisher − FedAvg", "FedAvg at equal compute",
                            "FedFisher − FedAvg"], rows)
    return "\n".join([*lines, "", f"Over all {m} FedFisher − FedAvg comparisons of the grid corrected together "
                      f"(every setting and depth, at the plateau and at equal compute), these survive Holm: "
                      + ("; ".join(across) if across else "none") + "."])


def momentum() -> str:
    """FedAvgM's place against FedAvg, with each table's verdict."""
    parts = []
    for setting, arms in grid(RECORDS).items():
        if "fedavgm" not in arms:
            continue
        found, layers = table(RECORDS, setting), setting[0]
        parts.append(f"{layers} layer{'s' if layers > 1 else ''}: {said(found['fedavgm', 'plateau'])} at the "
                     f"plateau, {said(found['fedavgm', 'budget'])} at equal compute")
    return ("FedAvgM (heavy-ball server momentum 0.9, 3 seeds) − FedAvg, test perplexity per token, Holm over "
            "each table: " + "; ".join(parts) + ".")


def source_gap() -> str:
    """The d_model-512 gap at 1 layer and how much of it FedAvg's fewer sequential updates account for."""
    setting = (1, "contiguous", "k4m4")
    arms, fam = grid(SOURCE)[setting], table(SOURCE, setting)
    m = len(arms) - 1
    gap = fam["central", "plateau"].paired
    share = stats.explained(stats.paired(values(arms["fedavg"], "plateau"), values(arms["central-b4"], "plateau")),
                            -gap.mean, m)
    c, f, b4 = (stats.summarize(values(arms[a], "plateau").values()) for a in ("central", "fedavg", "central-b4"))
    account = (f"the 4x fewer sequential updates account for at least {100 * share:.0f} % of the gap" if share > 0
               else "how much of the gap the 4x fewer sequential updates account for is not resolved")
    return (f"At 1 layer FedAvg ends {100 * (f.mean / c.mean - 1):.0f} % behind central ({f.mean:.1f} ± {f.sd:.1f} "
            f"against {c.mean:.1f} ± {c.sd:.1f}; central − FedAvg {said(fam['central', 'plateau'])}). Central given "
            f"FedAvg's sequential updates (a 4x batch) ends at {b4.mean:.1f} ± {b4.sd:.1f}, "
            f"{said(fam['central-b4', 'plateau'])} from FedAvg: {account} (the simultaneous interval over the "
            f"table's {m} comparisons bounds what is left of it), and it may be more than the whole gap.")


def study_real() -> str:
    """The top README's line for the d_model-32 real-text study."""
    one, two = (table(RECORDS, (layers, "contiguous", "k4m4")) for layers in (1, 2))
    fisher = fisher_family()
    topic = fisher[((1, "topic", "k4m4"), "budget")]
    k16 = fisher[((1, "contiguous", "k16m4"), "budget")]
    return (f"central − FedAvg at the plateau {said(one['central', 'plateau'])} (1 layer) and "
            f"{said(two['central', 'plateau'])} (2 layers); FedFisher − FedAvg {said(one['fedfisher', 'plateau'])} "
            f"(1 layer), but where the clients differ more, at equal compute and over all {len(fisher)} FedFisher − "
            f"FedAvg comparisons, {said(topic)} on topic shards and {said(k16)} with 16 clients (4 a round)")


def study_source() -> str:
    """The top README's line for the d_model-512 study."""
    one, two = (table(SOURCE, (layers, "contiguous", "k4m4")) for layers in (1, 2))
    diffs = [x for t in (one, two) for x in t["fedfisher", "plateau"].paired.diffs]
    return (source_gap() + f" FedFisher − FedAvg at 2 layers and equal compute: {said(two['fedfisher', 'budget'])}; "
            f"FedFisher is behind FedAvg in {sum(x > 0 for x in diffs)} of {len(diffs)} paired seeds at 1 and 2 "
            "layers (at the plateau)")


# ------------------------------------------------------------------------------ results_real.md, every table
def _depth(layers: int) -> str:
    return f"{layers} layer{'s' if layers > 1 else ''}"


def how_far(runs: list[dict], stage: str) -> str:
    """The plateau rule's outcome ('5/5 met the rule; best at rounds 756, 792, ...') or the equal-compute point's
    length ('720 rounds (46,080 sequences)') of one arm's runs."""
    s = runs[0]["summary"]
    unit = "steps" if "steps_done" in s else "rounds"
    if stage == "plateau":
        met = sum(r["summary"].get("stopped") == "plateau" for r in runs)
        return f"{met}/{len(runs)} met the rule; best at {unit} " + ", ".join(str(r["summary"]["best_at"])
                                                                              for r in runs)
    # training sequences per optimizer step (central) or per round (federated: all its clients)
    per = round(s["train_tokens"] / s[f"{unit}_done"] / runs[0]["args"]["sequence_length"])
    return f"{s['budget_at']} {unit} ({s['budget_at'] * per:,} sequences)"


def diagnostics(runs: list[dict]) -> str:
    """A table's notes: runs whose final validation perplexity is not below the unigram; FedEntropy's max/min client
    weight and FedFisher's floor share at the last round (metrics.jsonl)."""
    out = []
    if high := sum(not r["summary"]["final_val_ppl"] < r["summary"]["unigram_ppl"] for r in runs):
        out.append(f"{high}/{len(runs)} end above the unigram (unstable)")
    last = lambda key: [c[-1] for r in runs if (c := plateau.curve(r["path"], key))]  # noqa: E731
    if ratios := last("entropy_weight_ratio"):
        out.append(f"max/min weight {', '.join(f'{v:.3g}' for v in ratios)} (last round, per seed)")
    if shares := last("fisher_eps_share"):
        out.append(f"floor decides {100 * sum(shares) / len(shares):.1f} % of coordinates (last round)")
    return "; ".join(out)


def stage_table(folder: str, setting: tuple, stage: str) -> list[str]:
    """One table of results_real.md (``common.study_report.table``): every arm of ``setting``, its test perplexity
    per token and per word and best validation perplexity, its comparison to FedAvg over the table's family with
    its warnings, the plateau rule's outcome or the equal-compute length, its notes."""
    arms = grid(folder)[setting]
    ref = _arm("fedavg", setting)

    def label(name: str) -> str:
        text = LABELS[name.split("_")[0]]
        return text[:-1] + "; the reference)" if name == ref else text

    def group(name: str) -> list[dict]:
        return _runs(name, folder)

    columns = [study_report.Text("arm", label), study_report.Value("test ppl / token", stage),
               study_report.Delta("− FedAvg [95% CI], Holm over the table", stage, reference=ref),
               study_report.Value("test ppl / word", f"{stage} word"),
               study_report.Value("best validation ppl", f"{stage} val"),
               study_report.Text("plateau rule" if stage == "plateau" else "length",
                                 lambda n: how_far(group(n), stage)),
               study_report.Text("notes", lambda n: diagnostics(group(n)))]
    return study_report.table(table_study(folder, setting), lambda n, metric: values(group(n), metric), columns,
                              rows=[_arm(a, setting) for a in arms], notes=lambda n, m: real_notes(n, m, folder),
                              skip=unlearned(folder, setting))


def report(folder: str) -> str:
    """results_real.md's tables of a real-text record folder: each setting at the plateau and at equal compute,
    the test's reference points."""
    first = next(iter(grid(folder).values()))
    patience = next(iter(first.values()))[0]["summary"].get("patience")
    out = ["Test perplexity of each run's best-validation model (the test articles are read once, after training), "
           "mean ± sample sd over seeds ((n=k): k seeds where the table has more); paired difference to FedAvg over "
           "the same seeds with its 95 % t interval, Holm over each table's comparisons (at the plateau and at "
           f"equal compute: a family each). Plateau rule: a run stops after {patience} evaluations in a row "
           "without a 1 % gain; a run that never met it ran to its cap. k/n still improving: k of the arm's n runs "
           "had their best validation point at their last evaluation, where the rule stopped them.", ""]
    for setting, arms in grid(folder).items():
        s = next(iter(arms.values()))[0]["summary"]
        name = f"{_depth(setting[0])}, {setting_name(1, *setting[1:])}"
        out += [f"## {name}: at the plateau", "", *stage_table(folder, setting, "plateau"), "",
                f"Reference points on the test articles: uniform {s['test_uniform_ppl']:,.0f} / token, unigram "
                f"(fitted on the training articles) {s['test_unigram_ppl']:.1f} / token.", "",
                f"## {name}: at equal compute", "",
                "The best-validation model of each run's first part (`--budget-at`: the same training sequences "
                "for every arm), scored on the test articles; each plateau run keeps it, and at a constant rate it "
                "is exactly the shorter run.", "", *stage_table(folder, setting, "budget"), ""]
    return minus("\n".join(out))


def real_report() -> str:
    """mamba_fl/results/real/results_real.md: every table of the d_model-32 grid."""
    return report(RECORDS)


def source_report() -> str:
    """mamba_fl/results/real_source/results_real.md: every table of the source-size grid."""
    return report(SOURCE)


BLOCKS = {"real-report": real_report, "source-report": source_report, "real-table": real_table,
          "harder-table": harder_table, "momentum": momentum, "source-gap": source_gap, "study-real": study_real,
          "study-source": study_source, **results_synthetic.BLOCKS}
