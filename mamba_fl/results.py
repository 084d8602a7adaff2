"""The README blocks of mamba_fl's results, generated from the committed records of real_grid.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs), and those of the synthetic
grid (run_grid.py's records: ``mamba_fl/results_synthetic.py``, listed here). The studies they report are declared
in ``mamba_fl/studies.py``.

Records: ``RECORDS/runs/<arm>_L<layers>_<shard>_k<K>m<M>_plateau_s<seed>`` (args.json, summary.json), the
headline's d_model-32 grid, and ``SOURCE/runs/...`` the same grid at the source's d_model 512. Each table's
comparisons to FedAvg are one Holm family (``table_study``, results_real.md's tables); a sentence that draws a
conclusion across tables names the family that spans them (``studies.FISHER``).
"""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from common import plateau, stats, study, study_report
from common import results as RS
from mamba_fl import results_synthetic, studies

RECORDS = "mamba_fl/results/real"          # the d_model-32 real-text grid
SOURCE = "mamba_fl/results/real_source"    # the same grid at the source's size (one GPU)
ARMS = ("central", "central-b4", "fedavg", "fedfisher", "fedfisher-local", "fedentropy", "fedavgm")
LABELS = {"central": "central (AdamW, batch 16)", "central-b4": "central, 4x batch (FedAvg's sequential updates)",
          "fedavg": "FedAvg (client AdamW, moments kept)", "fedfisher": "FedFisher (per-example Fisher)",
          "fedfisher-local": "FedFisher (--fisher-method local)", "fedentropy": "FedEntropy",
          "fedavgm": "FedAvgM (heavy ball)"}
SHORT = {"central": "central", "central-b4": "central at 4x batch", "fedavg": "FedAvg", "fedfisher": "FedFisher",
         "fedfisher-local": "FedFisher-local", "fedentropy": "FedEntropy", "fedavgm": "FedAvgM"}  # in sentences


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


def cell(runs: list[dict], stage: str, seeds: int = 5) -> str:
    """'57.1 ± 1.1', with '(n=3)' where the arm has fewer seeds than its table."""
    s = stats.summarize(values(runs, stage).values())
    return f"{s.mean:.1f} ± {s.sd:.1f}" + (f" (n={s.n})" if s.n != seeds else "")


def passes(runs: list[dict]) -> str:
    """The passes over the training blocks at which the plateau rule stopped each run (min-max)."""
    return RS.range_of(studies.BUDGET_EPOCHS * r["summary"]["stopped_at"] / r["summary"]["budget_at"] for r in runs)


def _runs(name: str, folder: str = RECORDS) -> list[dict]:
    """The committed runs of ``studies.real_name``'s ``name`` in ``folder`` (none when the grid lacks them)."""
    arm, layers, shard, clients = name.split("_")
    return grid(folder).get((int(layers[1:]), shard, clients), {}).get(arm, [])


def table_study(folder: str, setting: tuple) -> study.Study:
    """One table of a record folder as a study: every arm of ``setting`` against FedAvg, at the plateau and at
    equal compute, each stage one Holm family (results_real.md's tables: ``report``), its arms and seeds those of
    the folder's runs (``studies.setting_study``)."""
    arms = grid(folder).get(setting, {})
    seeds = sorted({r["args"]["seed"] for runs in arms.values() for r in runs})
    return studies.setting_study(f"{folder} {studies.real_name('', setting)}", setting, list(arms), seeds)


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
    return {studies.real_name(a, setting): "not compared (every seed at or above the test unigram)"
            for a, runs in grid(folder).get(setting, {}).items()
            if all(r["summary"].get("status", "complete") != "complete"
                   or not r["summary"]["test_ppl"] < r["summary"]["test_unigram_ppl"] for r in runs)}


def compared(folder: str, setting: tuple):
    """``values`` of the arms of one table by name (``studies.real_name``), {} of an ``unlearned`` one."""
    skip = unlearned(folder, setting)
    return lambda name, metric: {} if name in skip else values(_runs(name, folder), metric)


def selection_notes(folder: str = RECORDS) -> dict:
    """{arm: 'lr at the high edge of its grid'} for each arm whose chosen setting (selection.json, beside the runs)
    is at an edge of the candidates it tried."""
    return _selection_notes(RS.path(folder) / "selection.json")


@cache
def _selection_notes(path: Path) -> dict:
    record = study.read_selection(path, f"{path}: no such file (real_grid.py writes the selection beside runs/ in its "
                                        "out-dir)")
    return {arm: f"{choice['flag'][2:]} at the {choice['edge']} edge of its grid"
            for arm, choice in _arms(record).items() if choice["edge"]}


def _arms(record: dict) -> dict:
    """{arm: its choice} of a selection record of real_grid.py: every setting but ``studies.BEST_OTHER``."""
    return {arm: choice for arm, choice in record["choices"].items() if arm in studies.CHOICES}


def _score(value, digits: int = 2) -> str:
    """A selection score as a table shows it: the number, or the word saying why there is none ("diverged")."""
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def real_notes(name: str, stage: str, folder: str = RECORDS) -> list[str]:
    """What a reader must know of arm ``name``'s runs beside its verdict: at the plateau, the runs whose best
    evaluation was their last (``studies.REAL_PLATEAU`` from their metrics.jsonl: stopped by the rule while still
    improving);
    its selection at an edge."""
    short = plateau.arm_note(studies.REAL_PLATEAU, {r["args"]["seed"]: r["path"] for r in _runs(name, folder)}) \
        if stage == "plateau" else None
    return [n for n in (short, selection_notes(folder).get(name.split("_")[0])) if n]


def _values(name: str, stage: str) -> dict:
    return values(_runs(name), stage)


def headline_table(folder: str, settings: tuple) -> str:
    """A headline table: every arm of ``settings`` (one row each, by depth) at the plateau and at equal compute,
    each verdict its table's (``table``: Holm over the table, with its warnings), the passes at the stop, and the
    test's reference points."""
    rows, runs = [], []
    for k in settings:
        found, arms = table(folder, k), grid(folder)[k]
        n = len(table_study(folder, k).seeds)

        def verdict(arm: str, stage: str, k: tuple = k, found: dict = found) -> str:
            if arm == "fedavg":
                return minus(study_report.warned("reference", real_notes(studies.real_name(arm, k), stage, folder)))
            if (arm, stage) not in found:  # FedAvg has no runs here
                return "–"
            d, claim, warnings = found[arm, stage]
            return study_report.warned(short(d, claim), warnings)

        rows += [[k[0], LABELS[arm], cell(g, "plateau", n), verdict(arm, "plateau"), passes(g), cell(g, "budget", n),
                  verdict(arm, "budget")] for arm, g in arms.items()]
        runs += [r["summary"] for g in arms.values() for r in g]
    lines = stats.markdown(["layers", "arm", "at the plateau", "− FedAvg [95% CI]", "passes at the stop",
                            f"at equal compute ({studies.BUDGET_EPOCHS:g} passes)", "− FedAvg [95% CI]"], rows)
    below = RS.range_of((s["test_unigram_ppl"] / s["test_ppl"] for s in runs), 1)
    return "\n".join([*lines, "", "k/n still improving: k of the arm's n runs had their best validation point at "
                       "their last evaluation, where the rule stopped them; they are not shown to be at a plateau. "
                       f"Reference points on the test articles: uniform {runs[0]['test_uniform_ppl']:,.0f}, unigram "
                       f"(fitted on the training articles) {runs[0]['test_unigram_ppl']:.1f} per token; every run "
                       f"of the table ends {below}x below the unigram."])


def real_table() -> str:
    """The headline table: 1 and 2 layers, 4 clients on contiguous shards."""
    return headline_table(RECORDS, studies.HEADLINE)


def source_table() -> str:
    """The source-size grid's table: 1 and 2 layers, 4 clients on contiguous shards."""
    return headline_table(SOURCE, tuple(k for k in grid(SOURCE) if k[1:] == ("contiguous", "k4m4")))


def fisher_family() -> dict:
    """{(setting, stage): Finding}: every FedFisher − FedAvg comparison of the d_model-32 grid (each setting, at the
    plateau and at equal compute) corrected together, ``studies.FISHER``'s family, with FedFisher's notes."""
    found = {(c.arm, c.metric): f for c, f in study_report.compare(studies.FISHER, _values, real_notes).items()}
    return {(k, stage): f for k in sorted(studies.SETTINGS) for stage in studies.STAGES
            for f in [found.get((studies.real_name("fedfisher", k), stage))] if f}


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
                                              found["fedfisher", stage].warnings) for stage in studies.STAGES}
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
    return "; ".join(out + results_synthetic.last_round_notes(runs))


def stage_table(folder: str, setting: tuple, stage: str) -> list[str]:
    """One table of results_real.md (``common.study_report.table``): every arm of ``setting``, its test perplexity
    per token and per word and best validation perplexity, its comparison to FedAvg over the table's family with
    its warnings, the plateau rule's outcome or the equal-compute length, its notes."""
    arms = grid(folder)[setting]
    ref = studies.real_name("fedavg", setting)

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
                              rows=[studies.real_name(a, setting) for a in arms],
                              notes=lambda n, m: real_notes(n, m, folder), skip=unlearned(folder, setting))


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


# ---------------------------------------------------------------------------- the README's sentences
def mean(folder: str, setting: tuple, arm: str, metric: str = "plateau") -> stats.Summary:
    """An arm's ``metric`` (``values``) over its seeds."""
    return stats.summarize(values(grid(folder)[setting][arm], metric).values())


def pct(a: float, b: float) -> str:
    """How far ``a`` is above ``b`` in percent ('2.3')."""
    return f"{100 * (a / b - 1):.1f}"


def mean_passes(runs: list[dict]) -> float:
    return stats.summarize(studies.BUDGET_EPOCHS * r["summary"]["stopped_at"] / r["summary"]["budget_at"]
                           for r in runs).mean


def central_gap() -> str:
    """Central against FedAvg on the same blocks at 1 and 2 layers, and what the second layer does."""
    plateau_, budget, = [], []
    for k in studies.HEADLINE:
        t, c, f = table(RECORDS, k), mean(RECORDS, k, "central"), mean(RECORDS, k, "fedavg")
        side = "above" if f.mean >= c.mean else "below"
        plateau_.append(f"{abs(f.mean - c.mean):.1f} points ({pct(f.mean, c.mean)} %) {side} central's at "
                        f"{_depth(k[0])}, central − FedAvg {said(t['central', 'plateau'])} over their shared seeds")
        budget.append(f"{said(t['central', 'budget'])} at {_depth(k[0])}")
    one, two = (grid(RECORDS)[k] for k in studies.HEADLINE)
    drops = [100 * (1 - mean(RECORDS, studies.HEADLINE[1], a).mean / mean(RECORDS, studies.HEADLINE[0], a).mean)
             for a in one if a in two]
    verb = "falls" if min(drops) > 0 else "changes"
    return minus(f"At the plateau FedAvg's mean is {'; and '.join(plateau_)}. At equal compute "
                 f"({studies.BUDGET_EPOCHS:g} passes) central − FedAvg is {' and '.join(budget)}. From 1 to 2 layers "
                 f"every arm's mean test perplexity at the plateau {verb} by {RS.range_of(drops, 0)} %.")


def b4_control() -> str:
    """Central at FedAvg's number of sequential updates (a 4x batch) against FedAvg and against central."""
    parts, behind = [], []
    for k in studies.HEADLINE:
        t = table(RECORDS, k)
        b4, f = ({st: mean(RECORDS, k, a, st).mean for st in studies.STAGES} for a in ("central-b4", "fedavg"))
        parts.append(f"{_depth(k[0])}: {b4['plateau']:.1f} against FedAvg's {f['plateau']:.1f} at the plateau, "
                     f"{said(t['central-b4', 'plateau'])}; {b4['budget']:.1f} against {f['budget']:.1f} at equal "
                     f"compute, {said(t['central-b4', 'budget'])}")
        behind.append(b4["budget"] - mean(RECORDS, k, "central", "budget").mean)
    return minus("Central with a 4x batch − FedAvg, " + "; ".join(parts) + ". At equal compute its mean is "
                 f"{RS.range_of(behind)} points above central's at 1 and 2 layers (a difference of means: central-b4 "
                 "− central is not among the tables' comparisons).")


def fisher_headline() -> str:
    """FedFisher against FedAvg at 1 and 2 layers, how much longer it runs, and its best validation point cut at
    FedAvg's stop (metrics.jsonl)."""
    one, two = (table(RECORDS, k) for k in studies.HEADLINE)
    arms = grid(RECORDS)[studies.HEADLINE[1]]
    fed = {r["args"]["seed"]: r for r in arms["fedavg"]}
    cut, own = [], []
    for r in arms["fedfisher"]:
        ref = fed[r["args"]["seed"]]
        rows = [json.loads(x) for x in (r["path"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
        cut.append(min(x["val_ppl"] for x in rows if "val_ppl" in x and x["round"] <= ref["summary"]["stopped_at"])
                   - ref["summary"]["best_val_ppl"])
        own.append(r["summary"]["best_val_ppl"] - ref["summary"]["best_val_ppl"])
    cut_, own_ = (stats.summarize(x).mean for x in (cut, own))
    f2 = mean(RECORDS, studies.HEADLINE[1], "fedavg").mean
    per_round = {L: stats.summarize(r["summary"]["wall_seconds"] / r["summary"]["rounds_done"]
                                    for r in grid(RECORDS)[k]["fedfisher"]).mean /
                 stats.summarize(r["summary"]["wall_seconds"] / r["summary"]["rounds_done"]
                                 for r in grid(RECORDS)[k]["fedavg"]).mean
                 for L, k in ((k[0], k) for k in studies.HEADLINE)}
    return minus(f"FedFisher − FedAvg at 1 layer: {said(one['fedfisher', 'plateau'])} at the plateau, "
                 f"{said(one['fedfisher', 'budget'])} at equal compute. At 2 layers, at the plateau: "
                 f"{said(two['fedfisher', 'plateau'])}, {100 * abs(two['fedfisher', 'plateau'].paired.mean) / f2:.0f} "
                 f"% of FedAvg's mean, where FedFisher runs longer before the rule stops it "
                 f"({passes(arms['fedfisher'])} passes, mean {mean_passes(arms['fedfisher']):.1f}, against FedAvg's "
                 f"{passes(arms['fedavg'])}, mean {mean_passes(arms['fedavg']):.1f}): cut at the round where FedAvg's "
                 f"run of the same seed stopped, FedFisher's best validation perplexity is {cut_:+.1f} from FedAvg's "
                 f"on average ({own_:+.1f} at its own stop); at equal compute {said(two['fedfisher', 'budget'])}. A "
                 f"FedFisher round takes {RS.range_of(per_round.values())}x FedAvg's wall time (1 and 2 layers, "
                 "summary.json; the runs shared the machine unevenly).")


def selection(folder: str = RECORDS) -> dict:
    """The selection record beside ``folder``'s runs (``study.read_selection``)."""
    return study.read_selection(RS.path(folder) / study.SELECTION_FILE)


def entropy() -> str:
    """FedEntropy's chosen temperature, its client weights there (metrics.jsonl of the reported runs) and at the
    other temperatures (the selection runs), and its verdicts at equal compute."""
    choice = selection()["choices"]["fedentropy"]
    chosen, scores = choice["chosen"], choice["scores"]
    weights, ratios = [], []
    for k in studies.HEADLINE:
        for r in grid(RECORDS)[k]["fedentropy"]:
            for row in map(json.loads, filter(str.strip, (r["path"] / "metrics.jsonl").read_text(
                    encoding="utf-8").splitlines())):
                if "entropy_weight" in row:
                    weights += row["entropy_weight"].values()
                    ratios.append(row["entropy_weight_ratio"])
    others = {t: plateau.curve(RS.path(f"{RECORDS}/runs") / f"select_fedentropy_temperature{t}",
                               "entropy_weight_ratio") for t in scores if float(t) < chosen}
    one, two = (table(RECORDS, k) for k in studies.HEADLINE)
    return minus(f"Its temperature, chosen on validation, is {chosen:g} (best validation perplexity per temperature: "
                 + ", ".join(f"{t}: {_score(v)}" for t, v in scores.items()) + f"): there its weights stay within "
                 f"{min(weights):.3f}-{max(weights):.3f} (largest / smallest at most {max(ratios):.3f} in any "
                 f"evaluation of any reported run), and FedEntropy − FedAvg at equal compute is "
                 f"{said(one['fedentropy', 'budget'])} at 1 layer and {said(two['fedentropy', 'budget'])} at 2 "
                 "layers. The largest / smallest weight at a lower temperature (its selection run): "
                 + "; ".join(f"T = {t}: {RS.range_of(c)}" for t, c in others.items()) + ".")


def fisher_local() -> str:
    """FedFisher with the local Fisher against FedAvg at 1 and 2 layers."""
    one, two = (table(RECORDS, k) for k in studies.HEADLINE)
    arms = [grid(RECORDS)[k] for k in studies.HEADLINE]
    local, fed = (passes([r for a in arms for r in a[arm]]) for arm in ("fedfisher-local", "fedavg"))
    return minus(f"At the plateau {' and '.join(cell(a['fedfisher-local'], 'plateau', 5) for a in arms)} at 1 and "
                 f"2 layers; FedFisher-local − FedAvg {said(one['fedfisher-local', 'plateau'])} and "
                 f"{said(two['fedfisher-local', 'plateau'])}, the rule stopping it after {local} passes (FedAvg "
                 f"{fed}); at equal compute {said(one['fedfisher-local', 'budget'])} and "
                 f"{said(two['fedfisher-local', 'budget'])}.")


def hand_check() -> str:
    """The selection's FedAvg run against the reported seeds' best validation perplexity (1 layer)."""
    choice, k = selection()["choices"]["fedavg"], studies.HEADLINE[0]
    lr = choice["chosen"]
    won = study.numeric_scores(choice)[lr]
    best = values(grid(RECORDS)[k]["fedavg"], "plateau val")
    return (f"Its FedAvg run (seed {studies.SELECTION_SEED}, the selection's winner at lr {lr:g}) reached {won:.2f} "
            f"on validation; the {len(best)} reported seeds reach {RS.range_of(best.values())} (mean "
            f"{stats.summarize(best.values()).mean:.1f}, against central's "
            f"{mean(RECORDS, k, 'central', 'plateau val').mean:.1f}).")


def selection_run(arm: str, candidate: str, folder: str = RECORDS) -> dict:
    """The selection run of ``arm`` at ``candidate`` (a selection.json key: "0.01", "local")."""
    flag, grid_values = studies.CHOICES[arm]
    value = candidate if isinstance(grid_values[0], str) else float(candidate)
    (run,) = RS.records(f"{folder}/runs", f"select_{arm}_{studies.candidate_name(flag, value)}")
    return run


def _stop(run: dict) -> str:
    unit = "steps" if run["summary"]["method"] == "central" else "rounds"
    return f"{run['summary']['stopped_at']:,} {unit}"


def real_selection() -> str:
    """The selection table: each arm's candidates, their best validation perplexity and where the plateau rule
    stopped the run, the choice, and how many extensions past an edge it took (selection.json and select_*)."""
    record = selection()
    rows = ["| arm, setting | candidates: best validation ppl (where the rule stopped it) | chosen |", "|---|---|---|"]
    for arm, choice in _arms(record).items():
        scores, chosen = choice["scores"], choice["chosen"]
        named = isinstance(studies.CHOICES[arm][1][0], str)  # a name (--fisher-method), not a number
        shown = study.candidate_key(chosen)
        cells = [f"{c}: {scores[c]:.2f} ({_stop(selection_run(arm, c))})" if not isinstance(scores[c], str) else
                 f"{c}: {scores[c]}" for c in (scores if named else sorted(scores, key=float))]
        cells = [f"**{text}**" if text.split(":")[0] == shown else text for text in cells]
        added = len(choice["extended"])
        if len(scores) < 2:
            where = "– (one candidate)"
        else:
            where = f"{shown}, {'at the edge' if choice['edge'] else 'inside'}" + (
                f" after {added} extension{'s' if added > 1 else ''}" if added else "")
        rows.append(f"| {SHORT[arm]}, `{choice['flag']}` | {', '.join(cells)} | {where} |")
    other = record["choices"][studies.BEST_OTHER]
    best = other["scores"]  # each other arm's chosen candidate's score
    return "\n".join(rows) + (
        f"\n\nThe best other arm is {SHORT[other['chosen']]} ({_score(best[other['chosen']])}, against "
        + " and ".join(f"{SHORT[a]}'s {_score(best[a])}" for a in studies.OTHERS if a != other["chosen"]) + ").")


def above(a: float, b: float) -> str:
    """'2.3 % above' or '0.3 % below': ``a`` against ``b``."""
    return f"{abs(100 * (a / b - 1)):.1f} % {'above' if a >= b else 'below'}"


def real_hand_check() -> str:
    """The check by hand before the grid, as the selection's runs of central and FedAvg at lr 1e-2 (seed 100,
    1 layer) record it: where the rule stopped them, their best validation perplexity against the unigram and
    uniform references, and FedAvg against central at the plateau and at the 4-pass point."""
    runs = {arm: selection_run(arm, "0.01") for arm in ("central", "fedavg")}
    rows = ["| run | stopped by the rule at | best validation ppl / token (where) | unigram | uniform | wall |",
            "|---|---|---|---|---|---|"]
    for arm, label in (("central", "central"), ("fedavg", "FedAvg, 4 clients, 1 local step")):
        s, stop = runs[arm]["summary"], _stop(runs[arm])
        rows.append(f"| {label} | {stop} ({passes([runs[arm]])} passes) | {s['best_val_ppl']:.2f} ({s['best_at']:,} "
                    f"{stop.split()[1]}) | {s['unigram_ppl']:.1f} | {s['uniform_ppl']:,.0f} | "
                    f"{s['wall_seconds'] / 60:.1f} min |")
    c, f = (runs[a]["summary"] for a in ("central", "fedavg"))
    below = min(r["unigram_ppl"] / r["best_val_ppl"] for r in (c, f))
    more = mean_passes([runs["fedavg"]]) / mean_passes([runs["central"]])
    return "\n".join(rows) + (
        f"\n\nBoth learn far past the unigram ({below:.1f}x below it or more). With the same seed, at the plateau "
        f"FedAvg's best ends {above(f['best_val_ppl'], c['best_val_ppl'])} central's, after {more:.1f}x the passes "
        f"with 4x fewer sequential updates per pass; at {studies.BUDGET_EPOCHS:g} passes it was "
        f"{above(f['budget_best_val_ppl'], c['budget_best_val_ppl'])} ({f['budget_best_val_ppl']:.1f} against "
        f"{c['budget_best_val_ppl']:.1f}). One seed on validation: a check, not a result.")


TOPIC, K16, L4 = (1, "topic", "k4m4"), (1, "contiguous", "k16m4"), (4, "contiguous", "k4m4")


def heterogeneity() -> str:
    """What topic shards and 16 clients (4 a round) cost FedAvg at 1 layer, and FedFisher − FedAvg as a share of
    FedAvg's mean in each setting."""
    base = studies.HEADLINE[0]
    fed = {k: mean(RECORDS, k, "fedavg").mean for k in (base, TOPIC, K16)}
    costs = [f"{fed[k] - fed[base]:.1f} points ({pct(fed[k], fed[base])} %) higher {what}" for k, what in
             ((TOPIC, "on topic shards"), (K16, "with 16 clients, 4 a round"))]
    share = {st: ", ".join(f"{100 * table(RECORDS, k)['fedfisher', st].paired.mean / mean(RECORDS, k, 'fedavg', st).mean:+.1f} % ({what})"  # noqa: E501
                           for k, what in ((base, "4 contiguous shards"), (TOPIC, "topic"), (K16, "16 clients")))
             for st in studies.STAGES}
    return minus(f"FedAvg's mean at the plateau, against its {fed[base]:.1f} on 4 contiguous shards, is "
                 f"{' and '.join(costs)}. FedFisher − FedAvg as a share of FedAvg's mean: {share['plateau']} "
                 f"at the plateau; {share['budget']} at equal compute (their verdicts: the table above).")


def depth() -> str:
    """4 layers, 3 seeds: every arm at the plateau, central and FedFisher against FedAvg, depth across the grid,
    and FedFisher's largest rise on validation after its best round."""
    t, arms = table(RECORDS, L4), grid(RECORDS)[L4]
    at = ", ".join(f"{SHORT[a]} {cell(g, 'plateau', len(g))}" for a, g in arms.items())
    best = " / ".join(f"{mean(RECORDS, L4, a, 'plateau val').mean:.1f}" for a in arms)
    chain = [k for k in sorted(grid(RECORDS)) if k[1:] == ("contiguous", "k4m4")]
    fed = " → ".join(f"{mean(RECORDS, k, 'fedavg').mean:.1f}" for k in chain)
    gaps = [pct(mean(RECORDS, k, "fedavg").mean, mean(RECORDS, k, "central").mean) for k in chain]
    paired = ", ".join(f"{table(RECORDS, k)['central', 'plateau'].paired.mean:+.1f}" for k in chain)
    rise = max(((min(c), max(c[c.index(min(c)):])) for r in arms["fedfisher"]
                if (c := plateau.curve(r["path"], "val_ppl"))), key=lambda x: x[1] - x[0])
    layers = ", ".join(str(k[0]) for k in chain)
    return minus(f"At the plateau {at} test perplexity per token (best validation {best}). Central − FedAvg "
                 f"{said(t['central', 'plateau'])} at the plateau and {said(t['central', 'budget'])} at equal "
                 f"compute, where central with a 4x batch − FedAvg is {said(t['central-b4', 'budget'])}. FedAvg's "
                 f"mean from {layers} layers: {fed}; FedAvg's mean is {', '.join(gaps)} % above central's at the "
                 f"plateau (paired central − FedAvg {paired}). FedFisher − FedAvg: {said(t['fedfisher', 'plateau'])} "
                 f"at the plateau and {said(t['fedfisher', 'budget'])} at equal compute; one of its seeds rose from "
                 f"{rise[0]:.1f} to {rise[1]:.1f} on validation after its best round, before the rule stopped it.")


def source_fisher() -> str:
    """FedFisher against FedAvg at the source's size: every paired seed, each table's verdicts, and the floor's
    share at the last round beside the d_model-32 headline's."""
    settings = [k for k in grid(SOURCE) if k[1:] == ("contiguous", "k4m4")]
    diffs, rel, verdicts = [], [], []
    for k in settings:
        arms, t = grid(SOURCE)[k], table(SOURCE, k)
        f, r = (values(arms[a], "plateau") for a in ("fedfisher", "fedavg"))
        diffs += [f[s] - r[s] for s in f if s in r]
        rel += [100 * (f[s] / r[s] - 1) for s in f if s in r]
        verdicts.append(f"{_depth(k[0])}: {said(t['fedfisher', 'plateau'])} at the plateau, "
                        f"{said(t['fedfisher', 'budget'])} at equal compute")
    worst = max(values(grid(SOURCE)[settings[0]]["fedfisher"], "plateau").values())

    def floor(folder: str) -> str:
        return RS.range_of((100 * c[-1] for k in grid(folder) if k[1:] == ("contiguous", "k4m4")
                            for r in grid(folder)[k].get("fedfisher", ()) if (c := plateau.curve(r["path"],
                                                                                                "fisher_eps_share"))),
                           0)

    above = sum(d > 0 for d in diffs)
    return minus(f"FedFisher's test perplexity is above FedAvg's in {above} of {len(diffs)} paired seeds (1 and 2 "
                 f"layers, at the plateau), by {RS.range_of(diffs, 0)} ({RS.range_of(rel, 0)} %); FedFisher − FedAvg "
                 f"{'; '.join(verdicts)}; at 1 layer its worst seed ends at {worst:.0f}. At the last round the floor "
                 f"decides {floor(SOURCE)} % of the coordinates at this size, {floor(RECORDS)} % in the d_model-32 "
                 "headline's 4-client runs on contiguous shards.")


def source_depth() -> str:
    """Each arm's mean at the plateau at 1 and 2 layers of the source-size grid."""
    one, two = ((1, "contiguous", "k4m4"), (2, "contiguous", "k4m4"))
    arms = [a for a in grid(SOURCE)[one] if a in grid(SOURCE).get(two, {})]
    return minus("From 1 to 2 layers at the plateau: " + ", ".join(
        f"{SHORT[a]} {mean(SOURCE, one, a).mean:.1f} → {mean(SOURCE, two, a).mean:.1f}" for a in arms)
        + f" (means over {len(table_study(SOURCE, one).seeds)} seeds; the grid declares no comparison across depths).")


def source_caveats() -> str:
    """The source-size selection at the edge of its candidates, and central's best validation steps."""
    parts = []
    for arm, choice in _arms(selection(SOURCE)).items():
        value, scores = choice["chosen"], study.numeric_scores(choice)
        near = max((c for c in scores if c != value), key=lambda c: -abs(c - value))
        parts.append(f"{SHORT[arm]} {scores[value]:.1f} at {value:g} against {scores[near]:.1f} at {near:g}")
    steps = sorted({r["summary"]["best_at"] for r in grid(SOURCE)[(1, "contiguous", "k4m4")]["central"]})
    return (f"Best validation perplexity of the selection runs: {'; '.join(parts)}. Central's best validation point "
            f"at 1 layer is at step {' / '.join(map(str, steps))} in each of its seeds.")


BLOCKS = {"real-selection": real_selection, "real-hand-check": real_hand_check,
          "real-report": real_report, "source-report": source_report, "real-table": real_table,
          "source-table": source_table, "harder-table": harder_table, "momentum": momentum, "source-gap": source_gap,
          "study-real": study_real, "study-source": study_source, "central-gap": central_gap,
          "b4-control": b4_control, "fisher-headline": fisher_headline, "entropy": entropy,
          "fisher-local": fisher_local, "hand-check": hand_check, "heterogeneity": heterogeneity, "depth": depth,
          "source-fisher": source_fisher, "source-depth": source_depth, "source-caveats": source_caveats,
          **results_synthetic.BLOCKS}
