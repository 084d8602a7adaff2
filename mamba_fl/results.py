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

from common import plateau, stats, study, study_report
from common import results as RS
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


@cache
def grid(folder: str) -> dict:
    """{(layers, shard, clients): {arm: [runs]}} of a real-text record folder; each run also carries its
    equal-compute point as "budget" (the summary's budget_* values)."""
    out: dict = {}
    for r in RS.records(f"{folder}/runs", "*_L*_plateau_s*"):
        arm, layers, shard, clients, *_ = r["name"].split("_")
        s = r["summary"]
        r["budget"] = {k: s.get(f"budget_{k}") for k in ("test_ppl", "best_val_ppl", "best_at")}
        out.setdefault((int(layers[1:]), shard, clients), {}).setdefault(arm, []).append(r)
    return {k: {a: v[a] for a in ARMS if a in v} for k, v in sorted(out.items())}


def values(runs: list[dict], stage: str) -> dict:
    """{seed: test perplexity per token} at the plateau ("plateau") or at equal compute ("budget")."""
    return {r["args"]["seed"]: (r["summary"]["test_ppl"] if stage == "plateau" else r["budget"]["test_ppl"])
            for r in runs}


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


@cache
def table(folder: str, setting: tuple) -> dict:
    """{(arm, stage): Finding} of ``table_study`` through ``common.study_report``, with each arm's notes."""
    found = study_report.compare(table_study(folder, setting), lambda n, stage: values(_runs(n, folder), stage),
                                 lambda n, stage: real_notes(n, stage, folder))
    return {(c.arm.split("_")[0], c.metric): f for c, f in found.items()}


@cache
def selection_notes(folder: str = RECORDS) -> dict:
    """{arm: 'lr at the high edge of its grid'} for each arm whose chosen setting (selection.json) is at an edge
    of the candidates it tried."""
    record = json.loads((RS.path(folder) / "selection.json").read_text(encoding="utf-8"))
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


BLOCKS = {"real-table": real_table, "harder-table": harder_table, "momentum": momentum, "source-gap": source_gap,
          "study-real": study_real, "study-source": study_source, **results_synthetic.BLOCKS}
