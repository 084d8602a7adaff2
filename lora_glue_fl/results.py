"""The README blocks of lora_glue_fl's results, generated from the committed records of run_grid.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs; ``--show
lora_glue_fl.sst2-table --records lora_glue_fl/results/minilm_glue=runs/lora_glue_minilm`` prints one from your own
grid's out-dir).

Records (``RECORDS``, the out-dir's layout, written by ``run_grid.py --records``):
``<task>_<method>[_<shard>]_s<seed>/`` (args.json, summary.json, metrics.jsonl) of every reported run,
``<task>_oneshot-naive_<shard>_s<seed>/adapter/fuse_manifest.json`` of each one-shot naive merge,
``selection/<task>_<family>_lr<rate>_s<seed>/`` of the selection runs, ``selection.json`` (every rate's score and the
choice), ``grid.json`` (each invocation's wall time) and ``shards/<name>/summary.json`` (each shard folder's label
mix, without the example indices).

The studies it reports are declared in lora_glue_fl/studies.py (``studies.STUDIES``: SST-2 and MRPC, their arms,
seeds, Holm families and merge contrasts, the plateau rules ``PLATEAU``, ``BUDGET`` and ``DECAYED``); this module
reads the records and writes the tables and sentences. SST-2 is compared in dev accuracy, MRPC in dev F1 with
accuracy beside it (``METRIC``, ``BESIDE``). Compute is matched in total optimizer steps (batches of 4 over all
clients), checked from the records. The plateau rules read the selection split's accuracy in both (its sampling
noise is binomial; F1's is not); a centralized or one-shot run is judged against its twin at twice the (local)
epochs where ``run_grid.py --budget_check`` ran one (``<task>_central-x2_s<seed>/``,
``<task>_oneshot-x2_<shard>_s<seed>/`` and its naive merge's, no arm of any table), and is not checked otherwise.
Every table is one function of the task; a task's blocks say its records are not committed yet until selection.json
holds the task.
"""
from __future__ import annotations

import functools
import json
import math
from functools import cache
from pathlib import Path

from common import plateau, stats, study, study_report
from common import results as RS
from common.errors import check
from lora_glue_fl import studies

RECORDS = "lora_glue_fl/results/minilm_glue"
TASK = "sst2"  # the task a function reads when none is named: the first study's
TITLE = {"sst2": "SST-2", "mrpc": "MRPC"}
METRIC = {"sst2": "accuracy", "mrpc": "f1"}  # the dev metric of every verdict: the task's main metric (glue_tasks)
BESIDE = {"sst2": (), "mrpc": ("accuracy",)}  # the dev metrics shown beside it
NAMES = {"accuracy": "accuracy", "f1": "F1"}
EXAMPLES = {"sst2": "sentences", "mrpc": "pairs"}
CLASSES = {"sst2": {0: "negative", 1: "positive"}, "mrpc": {0: "not a paraphrase", 1: "paraphrase"}}
COMMANDS = {"sst2": "--sst2_design merges", "mrpc": "--tasks mrpc --seeds 0 1 2"}  # run_grid.py's, out-dir aside
DIGITS = 3  # accuracies are fractions: 3 decimals, as the dev set's 872 sentences resolve about 0.001


def label(arm: str) -> str:
    """'FedAvg, SVD merge, iid shards'."""
    method, shard = studies.split(arm)
    return studies.METHODS.get(method, method) + (f", {studies.SHARDS.get(shard, shard)}" if shard else "")


def arms(task: str = TASK) -> tuple[str, ...]:
    """The task's arms, in the table's order."""
    return tuple(a.name for a in studies.STUDIES[task].arms)


def contrasts(task: str = TASK) -> list[tuple[str, str, str]]:
    """(arm a, arm b, what a − b answers) of the task's merge contrasts, in ``CONTRASTS``' order."""
    return [(c.arm, c.reference, c.metric) for c in studies.STUDIES[task].comparisons
            if c.family == studies.MERGE_FAMILY]


# ------------------------------------------------------------------------------------------------- records
def _rows(path: Path) -> list[dict]:
    f = path / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()] if f.is_file() else []


@cache
def _load(folder: Path, task: str) -> dict:
    """{arm: {seed: run}} of a record folder (``RS.record`` dicts with "rows", the fused model's metrics.jsonl rows
    and a centralized run's epochs; "clients", a federated run's client rows); a one-shot naive merge is its
    manifest as "summary", the args and clients of the one-shot run whose client adapters it merged."""
    out: dict = {}
    for r in RS.records(folder, f"{task}_*_s*"):
        rows = _rows(r["path"])
        r["rows"] = [x for x in rows if x.get("client") is None]
        r["clients"] = [x for x in rows if x.get("client") is not None]
        out.setdefault(r["name"][len(task) + 1:].rsplit("_s", 1)[0], {})[r["args"]["seed"]] = r
    for f in sorted(folder.glob(f"{task}_oneshot-naive*_s*/adapter/fuse_manifest.json")):  # and their twins'
        name = f.parents[1].name
        arm, seed = name[len(task) + 1:].rsplit("_s", 1)
        source = out.get(arm.replace("oneshot-naive", "oneshot"), {}).get(int(seed))
        if source is not None:
            out.setdefault(arm, {})[int(seed)] = {**source, "name": name, "path": f.parents[1], "rows": [],
                                                  "summary": json.loads(f.read_text(encoding="utf-8")),
                                                  "source": source}
    return out


def runs(arm: str, task: str = TASK) -> dict:
    """{seed: run} of an arm of the committed records (or of what ``--records`` put in their place)."""
    return _load(RS.path(RECORDS), task).get(arm, {})


def dev(arm: str, metric: str | None = None, task: str = TASK) -> dict:
    """{seed: the final dev-set ``metric``} of an arm (default: the task's ``METRIC``)."""
    metric = metric or METRIC[task]
    return {s: r["summary"]["final"][metric] for s, r in runs(arm, task).items()
            if r["summary"].get("final", {}).get(metric) is not None}


def reported(task: str = TASK) -> list[str]:
    """The task's arms with records, in the table's order."""
    return [a for a in arms(task) if runs(a, task)]


def steps(arm: str, _: str = "", task: str = TASK) -> dict:
    """{seed: optimizer steps over all clients} (batches of --batch_size): what the compared arms share."""
    return {s: _steps(r)[0] for s, r in runs(arm, task).items()}


def _steps(run: dict) -> tuple[int, int]:
    """(optimizer steps in all, sequential steps: a client's per round, the most of a round's clients, summed)."""
    if not run["clients"]:  # centralized: ceil(epochs x batches an epoch)
        a = run["args"]
        per_epoch = math.ceil(run["summary"]["train_examples"] / a["per_device_train_batch_size"])
        n = max(1, math.ceil(a["num_train_epochs"] * per_epoch))
        return n, n
    rounds: dict = {}
    for c in run["clients"]:
        rounds.setdefault(c["round"], []).append(c["steps"])
    return sum(map(sum, rounds.values())), sum(map(max, rounds.values()))


def _trained(task: str) -> list[dict]:
    """The task's training runs (every arm's but a one-shot naive merge, which trains nothing)."""
    return [r for a in arms(task) if studies.split(a)[0] != "oneshot-naive" for r in runs(a, task).values()]


def majority(metric: str | None = None, key: str = "majority", task: str = TASK) -> float:
    """The majority-class baseline in ``metric`` (default: the task's) of the dev set (``key``
    "selection_majority": of the selection split), the same in every run (refused otherwise: the runs would not
    share their data)."""
    metric = metric or METRIC[task]
    seen = {r["summary"][key][metric] for r in _trained(task) if key in r["summary"]}
    check(len(seen) <= 1, f"{RECORDS}: the runs disagree on the {key} baseline ({sorted(seen)}): not one grid")
    return seen.pop() if seen else math.nan


def majority_class(task: str = TASK) -> str:
    """The class the majority baseline always predicts (the training split's most frequent), by its name."""
    seen = {r["summary"]["majority_label"] for r in _trained(task) if "majority_label" in r["summary"]}
    check(len(seen) == 1, f"{RECORDS}: the {task} runs disagree on the majority class ({sorted(seen)})")
    k = seen.pop()
    return CLASSES[task].get(k, f"label {k}")


@cache
def _selection(folder: Path) -> dict:
    return study.read_selection(folder / study.SELECTION_FILE)


def selection(task: str = TASK) -> dict:
    """{family: its choice} of the task in run_grid.py's selection.json (``study.read_selection``; its settings
    "<task>/<family>", each {metric, scores, chosen, edge, extended, ...})."""
    prefix = f"{task}/"
    return {k.removeprefix(prefix): c for k, c in _selection(RS.path(RECORDS))["choices"].items()
            if k.startswith(prefix)}


def selection_runs(task: str = TASK) -> list[dict]:
    return RS.records(RS.path(RECORDS) / "selection", f"{task}_*_lr*_s*")


def edge(fam: str, task: str = TASK) -> str | None:
    """'rate at the high edge of its grid' when the family's chosen rate is the smallest or largest it tried."""
    v = selection(task).get(fam)
    return study_report.edge_note(v["scores"], v["chosen"], "rate") if v else None


# ------------------------------------------------------------------------------------------------- plateau
def noise(p: float, n: int) -> float:
    """The sampling sd of an accuracy ``p`` measured on ``n`` examples (binomial): the selection split's noise."""
    return math.sqrt(p * (1 - p) / n)


def _final_selection(run: dict) -> float | None:
    """A run's final selection-split accuracy (its summary's, else its last evaluation's; a one-shot naive merge's
    manifest's, None where the merge did not score the split)."""
    final = run["summary"].get("final", {}).get("selection_accuracy")
    return final if final is not None or not run["rows"] else run["rows"][-1]["selection_accuracy"]


def twins(task: str = TASK, arm: str = "central") -> dict:
    """{seed: run} of an arm's twins at twice the (local) epochs (``twin_arm``) whose run is recorded and scored on
    the selection split, each checked to be that run at twice its epochs and the same rate ({} for an arm that has
    none: one neither centralized nor one-shot)."""
    if not studies.has_twin(arm):
        return {}
    mine, out = runs(arm, task), {}
    epochs = "num_train_epochs" if arm == "central" else "local_epochs"
    for seed, twin in sorted(runs(studies.twin_arm(arm), task).items()):
        if seed not in mine or _final_selection(mine[seed]) is None or _final_selection(twin) is None:
            continue
        a, b = mine[seed]["args"], twin["args"]
        check(math.isclose(b[epochs], studies.TWIN_EPOCHS * a[epochs])
              and math.isclose(b["learning_rate"], a["learning_rate"]) and b.get("rounds") == a.get("rounds"),
              f"{RECORDS}: {twin['name']} is not {mine[seed]['name']} at {studies.TWIN_EPOCHS}x the epochs and "
              f"the same rate ({b[epochs]} epochs at {b['learning_rate']:g} against "
              f"{a[epochs]} at {a['learning_rate']:g})")
        out[seed] = twin
    return out


def twinned(task: str = TASK) -> dict[str, dict]:
    """{arm: its ``twins``} of the task's arms that have at least one."""
    return {a: t for a in arms(task) if (t := twins(task, a))}


def plateau_of(arm: str, task: str = TASK) -> dict[int, tuple[plateau.Judged, float | None]]:
    """{seed: (the plateau verdict, its gain or None)} of an arm's runs: a multi-round run's last third over the run
    at two thirds of its rounds (``PLATEAU``); a centralized or one-shot run's twin at twice the (local) epochs over
    the run (``BUDGET``), not checked (``DECAYED``) without a twin."""
    out, longer = {}, twins(task, arm)
    for seed, r in sorted(runs(arm, task).items()):
        curve = [x["selection_accuracy"] for x in r["rows"] if "selection_accuracy" in x]
        if seed in longer:
            value, second = _final_selection(r), _final_selection(longer[seed])
            out[seed] = (studies.BUDGET.judge(curve or [value], value=value, longer=second, noise=split_sd(arm, task)),
                         second - value)
            continue
        if studies.has_twin(arm) or len(curve) < 3:
            out[seed] = (studies.DECAYED.judge(curve or [math.nan]), None)
            continue
        cut = round(len(curve) * studies.CHECK_AT)
        out[seed] = (studies.PLATEAU.judge(curve, value=curve[cut - 1], longer=curve[-1], noise=split_sd(arm, task)),
                     curve[-1] - curve[cut - 1])
    return out


def split_sd(arm: str, task: str = TASK) -> float:
    """The selection split's sampling sd at the arm's mean final selection accuracy (its runs that scored the split):
    the noise ``PLATEAU`` and ``BUDGET`` read."""
    group = [r for r in runs(arm, task).values() if _final_selection(r) is not None]
    p = sum(r["rows"][-1]["selection_accuracy"] if r["rows"] else _final_selection(r) for r in group) / len(group)
    return noise(p, group[0].get("source", group[0])["summary"]["selection_examples"])


def tolerance(arm: str, task: str = TASK) -> float:
    """The tolerance of an arm's rule (``BUDGET`` for an arm with twins, ``PLATEAU`` otherwise): its ``tolerance``
    sds of the split's noise."""
    return (studies.BUDGET if twins(task, arm) else studies.PLATEAU).tolerance * split_sd(arm, task)


def notes(arm: str, _: str = "", task: str = TASK) -> list[str]:
    """What a reader must know beside an arm's verdict: its plateau (``plateau.note``), its rate at an edge."""
    return [n for n in (plateau.note({s: j for s, (j, _) in plateau_of(arm, task).items()}),
                        edge(studies.family(arm), task)) if n]


def _kinds(task: str) -> dict[str, tuple[int, list[int]]]:
    """{kind of ``KINDS`` the task has: (how many of its runs have no twin, the seeds of those with one)}."""
    out = {}
    for kind, methods in studies.KINDS.items():
        mine = {a: twins(task, a) for a in arms(task) if studies.split(a)[0] in methods}
        if mine:
            out[kind] = (sum(len(runs(a, task)) - len(t) for a, t in mine.items()),
                         sorted({s for t in mine.values() for s in t}))
    return out


def _decayed(task: str, sep: str = ", ") -> str:
    """The kinds of runs of the task no rule checks (one local run, decayed once, without a second budget):
    centralized or one-shot runs while one has no twin at twice the (local) epochs ('Centralized without a twin'
    when others have one); '' when none."""
    kinds = [kind + (" without a twin" if paired else "") for kind, (unpaired, paired) in _kinds(task).items()
             if unpaired]
    out = sep.join(kinds)
    return out[:1].upper() + out[1:]


def _past_budget(task: str, ran: str = "ran") -> str:
    """The clause on which runs of the task ran past their budget (``ran``: the verb, 'ran' or 'was run'): 'no arm
    ran past its budget' without twins, else only the centralized and one-shot runs, at twice the (local) epochs, of
    the seeds with one."""
    paired = {kind: seeds for kind, (_, seeds) in _kinds(task).items() if seeds}
    if not paired:
        return f"no arm {ran} past its budget"
    verb = "were run" if ran == "was run" else ran

    def seeds(x: list[int]) -> str:
        return f"seed{'s' if len(x) > 1 else ''} {', '.join(map(str, x))}"

    if list(paired) == ["centralized"]:
        return f"only centralized runs {verb} past their budget (twice the epochs, {seeds(paired['centralized'])})"
    return (f"only {' and '.join(f'{kind} runs ({seeds(x)})' for kind, x in paired.items())} {verb} past their "
            "budget (twice the (local) epochs)")


def _unchecked(task: str, ran: str = "ran", sep: str = ", ") -> str:
    """The sentence after the verdicts: the runs no rule checks, if any (``_decayed``), and those run past their
    budget (``_past_budget``)."""
    kinds, past = _decayed(task, sep), _past_budget(task, ran)
    return (f"{kinds} runs (one local run decayed to 0) are not checked, and {past}." if kinds else
            past[:1].upper() + past[1:] + ".")


def _accuracy_note(task: str) -> str:
    """Why the plateau reads accuracy where the task reports another metric ('' where it reports accuracy)."""
    name = NAMES[METRIC[task]]
    return "" if METRIC[task] == "accuracy" else \
        f" The rule reads accuracy, not the reported {name}: accuracy's sampling noise is binomial, {name}'s is not."


@cache
def _findings(folder: Path, task: str) -> dict:
    return study_report.compare(studies.STUDIES[task], lambda a, _: dev(a, task=task), lambda a, _: notes(a, task=task),
                                DIGITS, spent=lambda a, _: steps(a, task=task))


def findings(task: str = TASK) -> dict[tuple[str, str], study_report.Finding]:
    """{(arm, reference): Finding} of every comparison of the task's study (Holm over each declared family)."""
    return {(c.arm, c.reference): f for c, f in _findings(RS.path(RECORDS), task).items()}


def said(arm: str, reference: str = "central", task: str = TASK) -> str:
    """The comparison's clause (its claim and warnings); '(not run)' while a grid lacks one of the two arms."""
    found = findings(task).get((arm, reference))
    return RS.minus(study_report.said(found)) if found else "(not run)"


# ------------------------------------------------------------------------------------------------- blocks
def summary_cell(values: dict, task: str = TASK) -> str:
    s = stats.summarize(values.values())
    return f"{s.mean:.3f} ± {s.sd:.3f}" + (f" (n={s.n})" if s.n != len(studies.STUDIES[task].seeds) else "")


def cost(arm: str, task: str = TASK) -> tuple[str, str, str]:
    """(merge error of the last round, trainable parameters per client, MB a round) as the runs logged them; 'first
    → last' where they grow."""
    group = list(runs(arm, task).values())
    s = group[0]["summary"]
    if studies.split(arm)[0] == "central":
        return "–", f"{s['trainable_params']:,}", "–"
    errors = [r["rows"][-1]["merge_rel_error"] if r["rows"] else r["summary"]["merge_rel_error"] for r in group]
    error = f"{stats.summarize(errors).mean:.3f} ± {stats.summarize(errors).sd:.3f}"
    if studies.split(arm)[0] == "oneshot-naive":
        return error, f"{s['trainable_params']:,}", "as one-shot SVD"
    rows = group[0]["rows"]
    span = lambda a, b: a if a == b else f"{a} → {b}"  # noqa: E731
    return (error, span(f"{rows[0]['client_trainable_params']:,}", f"{rows[-1]['client_trainable_params']:,}"),
            span(f"{rows[0]['round_bytes'] / 1e6:.2f}", f"{rows[-1]['round_bytes'] / 1e6:.2f}"))


def _span(values: list[int]) -> str:
    """'1,512', or '1,500–1,512' when the seeds differ."""
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _dev_name(task: str) -> str:
    """'SST-2 dev accuracy', 'MRPC dev F1'."""
    return f"{TITLE[task]} dev {NAMES[METRIC[task]]}"


def dev_table(task: str = TASK) -> str:
    """The task's dev metric (and those ``BESIDE`` it) of every arm against centralized LoRA, one Holm family, with
    each arm's compute and cost; the majority baseline first."""
    found = findings(task)
    if not reported(task):
        return "No reported run has finished yet."
    rows = [["majority-class baseline", f"{majority(task=task):.3f}",
             *(f"{majority(m, task=task):.3f}" for m in BESIDE[task]), "", "", "", "", ""]]
    for arm in reported(task):
        spent = [_steps(r) for r in runs(arm, task).values()]
        verdict = study_report.warned("reference", notes(arm, task=task)) if arm == "central" else \
            said(arm, task=task) if (arm, "central") in found else "–"
        rows.append([label(arm), summary_cell(dev(arm, task=task), task),
                     *(summary_cell(dev(arm, m, task), task) for m in BESIDE[task]), verdict, *cost(arm, task),
                     f"{_span([t for t, _ in spent])} ({_span([q for _, q in spent])})"])
    m = sum(f.paired.n >= 2 for (_, ref), f in found.items() if ref == "central")  # the family's size in its claims
    return RS.minus("\n".join(stats.markdown(
        [_dev_name(task), f"mean ± sd (n = {len(studies.STUDIES[task].seeds)})",
         *(f"{NAMES[m]}, mean ± sd" for m in BESIDE[task]),
         f"− centralized, paired by seed [95% CI], Holm over the {m} arms", "merge error, last round",
         "trainable params per client", "MB per round (down + up)", "optimizer steps (sequential)"], rows)))


def contrast_table(task: str = TASK) -> str:
    """The task's merge contrasts, paired by seed, one Holm family (``contrasts``)."""
    found, rows = findings(task), []
    for a, b, what in contrasts(task):
        if (a, b) in found:
            d = found[a, b].paired
            rows.append([what, f"{label(a)} − {label(b)}", study_report.said(found[a, b]),
                         " ".join(f"{x:+.3f}" for x in d.diffs)])
    return RS.minus(f"{_dev_name(task)}, a − b paired by seed, Holm over the {len(rows)} contrasts together; "
                    "'rules out' from their simultaneous interval:\n\n"
                    + "\n".join(stats.markdown(["question", "a − b", "[95% CI]", "per seed"], rows)))


def seeds_table(task: str = TASK) -> str:
    """Every arm's dev metric per seed (those ``BESIDE`` it in parentheses)."""
    values = {a: [dev(a, m, task) for m in (METRIC[task], *BESIDE[task])] for a in reported(task)}
    seeds = sorted({s for v in values.values() for s in v[0]})
    cell = lambda v, s: f"{v[0][s]:.3f}" + "".join(f" ({x[s]:.3f})" for x in v[1:] if s in x)  # noqa: E731
    rows = [[label(a), *(cell(v, s) if s in v[0] else "–" for s in seeds)] for a, v in values.items()]
    beside = "".join(f" ({NAMES[m]})" for m in BESIDE[task])
    return "\n".join(stats.markdown([_dev_name(task) + beside, *(f"seed {s}" for s in seeds)], rows))


def selection_table(task: str = TASK) -> str:
    """Each family's rates and their final selection-split score (selection.json), the choice in bold, its margin
    over the next best (against the split's sampling noise where the score is an accuracy), a choice at the edge of
    its grid marked."""
    record = selection(task)
    rates = sorted({float(r) for v in record.values() for r in v["scores"]})
    size = {r["summary"]["selection_examples"] for r in selection_runs(task)}
    check(len(size) == 1, f"{RECORDS}/selection: the selection runs disagree on the split's size ({size})")
    metric = {v["metric"].split(".")[-1] for v in record.values()}  # the summary's key: final.selection_f1
    check(len(metric) == 1, f"{RECORDS}/selection.json: the {task} families were chosen on different metrics "
                            f"({sorted(metric)})")
    metric = metric.pop().removeprefix("selection_")
    binomial = metric == "accuracy"  # an accuracy's sampling sd is binomial; an F1's has no such form
    n, rows = size.pop(), []
    for fam, v in record.items():
        scores = {float(r): s for r, s in v["scores"].items()}
        cells = ["–" if r not in scores else scores[r] if isinstance(scores[r], str) else  # why it has none
                 (f"**{scores[r]:.3f}**" if r == v["chosen"] else f"{scores[r]:.3f}") for r in rates]
        best = scores[v["chosen"]]
        runner = max((s for r, s in scores.items() if r != v["chosen"] and not isinstance(s, str)), default=None)
        margin = "–" if runner is None else f"{best - runner:+.3f}" + (
            f" ({(best - runner) / noise(best, n):.1f} sd)" if binomial else "")
        rows.append([fam, *cells, f"{v['chosen']:g}", margin, edge(fam, task) or ""])
    seeds = sorted({r["args"]["seed"] for r in selection_runs(task)})
    base = {r["summary"]["selection_majority"][metric] for r in selection_runs(task)}
    flat = [f"{fam} {float(r):g}" for fam, v in record.items() for r, x in v["scores"].items()
            if not isinstance(x, str) and base and abs(x - min(base)) < 1e-9]
    majority_line = (f" The selection split's majority class scores {min(base):.3f}" + (
        f"; rates that end there (a constant prediction): {', '.join(flat)}." if flat else ".")) if base else ""
    scale = (f"in units of the split's sampling sd (binomial at the chosen accuracy, {noise(0.86, n):.3f} near 0.86)"
             if binomial else f"in {NAMES.get(metric, metric)} (its sampling noise is not binomial: no sd is given)")
    return RS.minus(
        f"Final selection-split {NAMES.get(metric, metric)} of every rate ({n} {EXAMPLES[task]} held out of training; "
        f"selection seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, never a reported one), the "
        f"chosen rate in bold; its margin over the next best {scale}:\n\n" + "\n".join(stats.markdown(
            ["arm family", *(f"AdamW {r:g}" for r in rates), "chosen", "margin over the next best", "note"], rows))
        + ("\n\n" + majority_line.strip() if majority_line else ""))


def plateau_table(task: str = TASK) -> str:
    """Every arm's plateau verdict: the gain per seed against the tolerance (a multi-round run's last third; a
    centralized run's twin at twice the epochs, '–' for a seed without one), or why it is not checked; the prose
    says which runs no rule checks and which ran past their budget, from the records."""
    rows = []
    for arm in reported(task):
        judged = plateau_of(arm, task)
        gains = [g for _, g in judged.values() if g is not None]
        shown = " ".join("–" if g is None else f"{g:+.3f}" for _, g in judged.values())  # per seed, in seed order
        if not gains:
            rows.append([label(arm), "–", "–", "not checked: " + ("its single merge of one local run, decayed to 0"
                                                                  if "oneshot" in arm else
                                                                  "one local run, its rate decayed to 0")])
            continue
        verdict = plateau.note({s: j for s, (j, _) in judged.items()}) or \
            f"at plateau by this rule ({len(gains)}/{len(gains)})"
        rows.append([label(arm), shown, f"{tolerance(arm, task):.3f}", verdict])
    kinds, paired = _decayed(task).lower(), [k for k, (_, seeds) in _kinds(task).items() if seeds]
    past = _past_budget(task, "was run") + (", so no other arm is shown to be at its plateau beyond its budget."
                                             if paired else ", so none is shown to be at its plateau beyond it.")
    whose = " or ".join({"centralized": "a centralized", "one-shot": "a one-shot"}[k] for k in paired)
    epochs = "epochs" if paired == ["centralized"] else "(local) epochs"
    return RS.minus(
        "Selection-split accuracy gained in the last third of the rounds (rounds 5–6 over the same run after round "
        "4, a complete 4-round run: each round's local rate restarts and decays to 0) per seed"
        + (f", and by {whose} run's twin at twice the {epochs} (the same rate decaying to 0 over all of them"
           + ("; a one-shot run's merged the same way" if "one-shot" in paired else "") + ") over the run"
           if paired else "")
        + "; still improving when the gain exceeds 1 sd of the split's sampling noise at the arm's accuracy."
        + _accuracy_note(task)
        + (" A run whose rate decayed once to 0 " + ("without a second budget " if paired else "")
           + f"({kinds}) satisfies any last-part rule by construction and is not checked; {past}" if kinds else
           f" {past[:1].upper()}{past[1:]}") + "\n\n"
        + "\n".join(stats.markdown(["arm", "gain per seed", "tolerance (1 sd)", "verdict"], rows)))


def _mean_sd(values: dict) -> str:
    s = stats.summarize(values.values())
    return f"{s.mean:.3f} ± {s.sd:.3f}"


def _per_seed(values: dict) -> str:
    return " / ".join(f"{values[s]:.3f}" for s in sorted(values))


def _ahead(a: str, b: str, task: str = TASK) -> str:
    d = findings(task)[a, b].paired
    return f"{sum(x > 0 for x in d.diffs)} of {d.n}"


def _last(arm: str, key: str, task: str = TASK) -> list:
    """``key`` of each run's last fused row (a one-shot naive merge: its manifest)."""
    return [r["rows"][-1][key] if r["rows"] else r["summary"][key] for r in runs(arm, task).values()]


def skewed_client(run: dict) -> tuple[int, dict]:
    """(client, {label: count}) of a run's most label-skewed client (the smallest share of its rarer label), from
    the committed label mix of its shard folder (shards/<name>/summary.json)."""
    f = RS.path(RECORDS) / "shards" / Path(run["args"]["shard_dir"]).name / "summary.json"
    mixes = json.loads(f.read_text(encoding="utf-8"))["label_histograms"]
    k = min(range(len(mixes)), key=lambda i: min(mixes[i].values()) / sum(mixes[i].values()))
    return k + 1, mixes[k]


def _federation(task: str = TASK) -> str:
    """The reading's line on federation at equal compute, iid shards: FedAvg − centralized with each merge, the
    seeds below, and the sequential steps that differ."""
    central, fed = (next(iter(runs(a, task).values())) for a in ("central", "svd_iid"))
    (c_total, c_seq), (f_total, f_seq) = _steps(central), _steps(fed)
    below = findings(task)["svd_iid", "central"].paired
    return (f"- **Federation at equal compute** ({f_total:,} optimizer steps of FedAvg's clients against "
            f"centralized's {c_total:,}), iid shards: FedAvg − centralized {said('svd_iid', task=task)} with the SVD "
            f"merge, {said('naive_iid', task=task)} naive; FedAvg (SVD) is below its centralized twin in "
            f"{sum(x < 0 for x in below.diffs)} of {below.n} seeds. A FedAvg client makes {f_seq:,} sequential steps, "
            f"centralized {c_seq:,}: the gap mixes the cost of averaging with fewer sequential updates, and this grid "
            "does not separate the two.")


def _merges(kind: str = "multi-round", task: str = TASK) -> str:
    """The reading's line on SVD − naive merging (``kind`` "multi-round" or "one-shot") on each sharding that has
    both arms: the verdict, the seeds SVD is ahead in, each merge's error of the last round; '' when none has."""
    svd, naive = ("oneshot", "oneshot-naive") if kind == "one-shot" else ("svd", "naive")
    pairs = [(s, f"{svd}_{s}", f"{naive}_{s}") for s in studies.SHARDS
             if runs(f"{svd}_{s}", task) and runs(f"{naive}_{s}", task)]
    head = "One-shot, SVD − naive merge" if kind == "one-shot" else "Which merge, SVD − naive"
    return f"- **{head}**: " + "; ".join(
        f"{studies.SHARDS[s]} {said(a, b, task)}, SVD ahead in {_ahead(a, b, task)} seeds (merge error naive "
        f"{RS.range_of(_last(b, 'merge_rel_error', task), 2, '–')}, SVD "
        f"{RS.range_of(_last(a, 'merge_rel_error', task), 2, '–')})" for s, a, b in pairs) + "." if pairs else ""


def _skew(task: str = TASK) -> str:
    """The reading's first sentence on label skew: FedAvg SVD on Dirichlet against iid shards, per seed."""
    skew, iid = dev("svd_dir0.1", task=task), dev("svd_iid", task=task)
    return (f"- **Label skew** (Dirichlet α = 0.1): FedAvg SVD {_mean_sd(skew)} against {_mean_sd(iid)} on iid "
            f"shards, iid − skew {said('svd_iid', 'svd_dir0.1', task)}; per seed {_per_seed(skew)} against "
            f"{_per_seed(iid)}.")


def _plateau_line(task: str = TASK) -> str:
    """The reading's plateau line: the arms at it and those still improving by ``PLATEAU``."""
    rounds = next(iter(runs("svd_iid", task).values()))["summary"]["rounds_done"]
    checked = {a: plateau_of(a, task) for a in reported(task)
               if any(g is not None for _, g in plateau_of(a, task).values())}
    short = [f"{label(a)} ({plateau.note({s: j for s, (j, _) in v.items()})})" for a, v in checked.items()
             if any(j.state == "still improving" for j, _ in v.values())]
    flat = [label(a) for a, v in checked.items() if all(j.state == "at plateau" for j, _ in v.values())]
    paired = [k for k, (_, seeds) in _kinds(task).items() if seeds]
    epochs = "epochs" if paired == ["centralized"] else "(local) epochs"
    central = ("; centralized: its twin at twice the epochs against the run" if paired == ["centralized"] else
               f"; {' and '.join(paired)} runs: each against its twin at twice the {epochs}" if paired else "")
    cut = round(rounds * studies.CHECK_AT)
    return (f"- **Plateau** (rounds {cut + 1}–{rounds} against round "
            f"{cut}{central}{';' if central else ','} tolerance 1 sd of the selection split's "
            "noise): at it by this rule: " + ("; ".join(flat) if flat else "none") + "; still improving: "
            + ("; ".join(short) if short else "none") + f". {_unchecked(task, sep=' and ')}" + _accuracy_note(task))


def sst2_findings() -> str:
    """The reading of the SST-2 table, each number from the records, each verdict over its declared family."""
    if not (runs("central") and runs("svd_iid")):
        return "The grid has not run its centralized and FedAvg SVD iid cells yet."
    rounds = next(iter(runs("svd_iid").values()))["summary"]["rounds_done"]
    base, low = majority(), min(((v, a, s) for a in reported() for s, v in dev(a).items()))
    means = [stats.summarize(dev(a).values()).mean - base for a in reported()]
    flat = [(a, s) for a in reported() for s, v in dev(a).items() if v <= base + 1e-9]  # a constant prediction
    head = ("Every arm's mean is above the majority class" if flat else "Every run has learned")
    out = [f"- **{head}**: each arm's mean is {RS.range_of(means, 3, '–')} above the majority class "
           f"({base:.3f}) on the dev set; the lowest single run is {low[0]:.3f} ({label(low[1])}, seed {low[2]})"
           + (f"; {len(flat)} run{'s' if len(flat) > 1 else ''} ended at the majority class (a constant prediction: "
              "not learned): " + ", ".join(f"{label(a)} seed {s}" for a, s in flat) if flat else "") + ".",
           _federation()]
    if runs("exact_iid"):
        ex = runs("exact_iid")[min(runs("exact_iid"))]["rows"]
        full = next(x["round"] for x in ex if x["fused_rank"] == ex[-1]["fused_rank"])
        first = stats.summarize(r["rows"][0]["selection_accuracy"] for r in runs("exact_iid").values()).mean
        out.append(f"- **Which merge, {rounds} rounds, iid shards**: SVD − naive {said('svd_iid', 'naive_iid')}; "
                   f"exact − SVD {said('exact_iid', 'svd_iid')}; the exact adapter reaches rank "
                   f"{ex[-1]['fused_rank']} by round {full} (selection accuracy {first:.3f} after round 1, the mean "
                   f"over seeds): "
                   f"{ex[-1]['client_trainable_params'] / ex[0]['client_trainable_params']:.0f}x the client "
                   f"parameters and {ex[-1]['round_bytes'] / ex[0]['round_bytes']:.0f}x the bytes of a round by its "
                   f"last (merge error {RS.range_of(_last('exact_iid', 'merge_rel_error'), 3, '–')} against SVD's "
                   f"{RS.range_of(_last('svd_iid', 'merge_rel_error'), 3, '–')}).")
    if _merges("one-shot"):
        out.append(_merges("one-shot"))
    if runs("svd_dir0.1"):
        skew, iid = dev("svd_dir0.1"), dev("svd_iid")
        worst = min(skew, key=skew.get)
        client, mix = skewed_client(runs("svd_dir0.1")[worst])
        curve = [x["selection_accuracy"] for x in runs("svd_dir0.1")[worst]["rows"]]
        steady = {a: stats.summarize(dev(a).values()).sd for a in reported() if studies.split(a)[1] == "dir0.1"}
        calm = min(steady, key=steady.get)
        out.append(_skew() + f" The lowest, seed {worst} ({skew[worst]:.3f}; its iid twin "
                   f"{iid.get(worst, math.nan):.3f}), holds a client with "
                   + " and ".join(f"{n} of label {k}" for k, n in sorted(mix.items()))
                   + f" (client {client}); its selection accuracy by round: "
                   + " → ".join(f"{v:.3f}" for v in curve) + f". The steadiest skewed arm: {label(calm)}, "
                   f"{_mean_sd(dev(calm))}.")
    out.append(_plateau_line())
    return RS.minus("\n".join(out))


def above_majority(task: str = TASK) -> dict[str, tuple[int, int]]:
    """{arm: (seeds above the majority class in every dev metric of the task, seeds)}."""
    metrics = (METRIC[task], *BESIDE[task])
    base = {m: majority(m, task=task) for m in metrics}
    out = {}
    for arm in reported(task):
        values = {m: dev(arm, m, task) for m in metrics}
        seeds = sorted(values[METRIC[task]])
        out[arm] = sum(all(values[m].get(s, -math.inf) > base[m] for m in metrics) for s in seeds), len(seeds)
    return out


def mrpc_findings() -> str:
    """The reading of the MRPC table: every arm's F1 and accuracy against the majority class (whether it learned),
    federation at equal compute, which merge, label skew and the plateau, each verdict over its declared family."""
    task = "mrpc"
    if not (runs("central", task) and runs("svd_iid", task)):
        return "The grid has not run its centralized and FedAvg SVD iid cells yet."
    metrics = (METRIC[task], *BESIDE[task])
    base = {m: majority(m, task=task) for m in metrics}
    per_arm, learned = [], above_majority(task)
    for arm in reported(task):
        values = {m: dev(arm, m, task) for m in metrics}
        per_arm.append(f"{label(arm)} " + ", ".join(f"{NAMES[m]} {_mean_sd(values[m])}" for m in metrics)
                       + f", {learned[arm][0]} of {learned[arm][1]}")
    every = [label(a) for a, (k, n) in learned.items() if k == n]
    short = [label(a) for a, (k, n) in learned.items() if k < n]
    out = [f"- **Against the majority class** (always predicting “{majority_class(task)}”, the training split's "
           "majority: dev " + ", ".join(f"{NAMES[m]} {base[m]:.3f}" for m in metrics) + "); each arm's "
           + " and ".join(NAMES[m] for m in metrics) + ", mean ± sd over seeds, and the seeds above the majority in "
           "both: " + "; ".join(per_arm) + ". Above it in both in every seed: " + ("; ".join(every) or "none")
           + "; not in every seed: " + ("; ".join(short) or "none") + f". Every verdict below is in dev "
           f"{NAMES[METRIC[task]]}.", _federation(task)]
    skewed = [s for s in studies.SHARDS if s != "iid" and runs(f"svd_{s}", task)]
    if skewed:
        out[-1] += " " + " ".join(
            f"On {studies.SHARDS[s]}: FedAvg − centralized {said(f'svd_{s}', task=task)} with the SVD merge, "
            f"{said(f'naive_{s}', task=task)} naive." for s in skewed)
    if _merges(task=task):
        out.append(_merges(task=task))
    if runs("svd_dir0.1", task):
        out.append(_skew(task))
    out.append(_plateau_line(task))
    return RS.minus("\n".join(out))


def study_line(task: str = TASK) -> str:
    """The top README's line for a task's study: federation against centralized, the merges, label skew."""
    parts = [f"FedAvg (SVD merge, iid shards) − centralized at equal compute {said('svd_iid', task=task)}",
             f"SVD − naive merging {said('svd_iid', 'naive_iid', task)}"]
    if runs("exact_iid", task):
        parts.append(f"exact − SVD {said('exact_iid', 'svd_iid', task)}")
    if runs("oneshot-naive_iid", task):
        parts.append(f"one-shot SVD − naive {said('oneshot_iid', 'oneshot-naive_iid', task)} (iid)")
    if task != TASK and runs("svd_dir0.1", task):
        parts.append(f"iid − Dirichlet α = 0.1 (SVD) {said('svd_iid', 'svd_dir0.1', task)}")
    if task != TASK:  # what a reader needs beside a verdict: the arms against the majority class
        metrics = (METRIC[task], *BESIDE[task])
        k, n = above_majority(task)["svd_iid"]
        parts.insert(0, "the majority class scores " + ", ".join(f"{NAMES[m]} {majority(m, task=task):.3f}"
                                                                 for m in metrics)
                     + "; centralized " + summary_cell(dev("central", task=task), task) + ", FedAvg (SVD, iid) "
                     + summary_cell(dev("svd_iid", task=task), task)
                     + f", above the majority in every metric in {k} of {n} seeds")
    return RS.minus("; ".join(parts))


def _portable(argv: list[str]) -> list[str]:
    """An invocation's flags as a reader would type them: the machine's folders (--out-dir, --real_data_dir and
    --records values) as the README's command names them."""
    shown = {"--out-dir": "runs/lora_glue_minilm", "--out_dir": "runs/lora_glue_minilm",
             "--real_data_dir": "../shared/data", "--real-data-dir": "../shared/data", "--records": RECORDS}
    return [shown.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]


def grid_time() -> str:
    """The grid's wall time (grid.json: each invocation) and, per task, its runs' own time and load
    (summary.json)."""
    f = RS.path(RECORDS) / "grid.json"
    record = [g for g in (json.loads(f.read_text(encoding="utf-8")) if f.is_file() else [])
              if g.get("runs", {}).get("finished", 1)]  # an invocation that found every run done ran nothing
    tasks = [t for t in studies.STUDIES if recorded(t)]

    def minutes(group: list[dict], key: str) -> str:
        return f"{sum(r['summary'].get(key) or 0 for r in group) / 60:.1f} min"

    def own(task: str, sep: str = "; ") -> str:
        mine, chooser = _trained(task), selection_runs(task)
        extra = [r for a, t in twinned(task).items() if studies.split(a)[0] != "oneshot-naive" for r in t.values()]
        said = " and ".join(k for k, (_, seeds) in _kinds(task).items() if seeds)
        return (f"the {len(chooser)} selection runs {minutes(chooser, 'wall_seconds')} wall, "
                f"{minutes(chooser, 'cpu_seconds')} CPU{sep}the {len(mine)} reported training runs "
                f"{minutes(mine, 'wall_seconds')} wall, {minutes(mine, 'cpu_seconds')} CPU"
                + (" (the one-shot naive merges not timed)"
                   if any(studies.split(a)[0] == "oneshot-naive" for a in arms(task)) else "")
                + (f"{sep}the {len(extra)} {said} runs at twice the epochs (--budget_check) "
                   f"{minutes(extra, 'wall_seconds')} wall, {minutes(extra, 'cpu_seconds')} CPU" if extra else ""))

    loads = [r["summary"][k] for t in tasks for r in _trained(t) + selection_runs(t)
             + [r for a, tw in twinned(t).items() if studies.split(a)[0] != "oneshot-naive" for r in tw.values()]
             for k in ("load_start", "load_end") if k in r["summary"]]
    calls = "; ".join(f"`{' '.join(_portable(g['argv']))}` {g['wall_seconds'] / 60:.1f} min wall, finished "
                      f"{g['finished_at'][:10]}" for g in record) or "not finished"
    return (f"Grid wall time (grid.json, each invocation that ran something): {calls}. Its runs' own time "
            "(summary.json): " + (own(TASK) if tasks == [TASK] else "; ".join(f"{TITLE[t]}, {own(t, ', ')}"
                                                                               for t in tasks))
            + (f"; load {RS.range_of(loads, 1, '–')} at their starts and ends" if loads else "") + ".")


def shards_table(task: str = TASK) -> str:
    """Each skewed sharding's label mix per client and seed (label 0 / label 1), from the shard folders' records."""
    rows = []
    for shard in studies.SHARDS:
        if shard == "iid" or not runs(f"svd_{shard}", task):
            continue
        for seed, r in sorted(runs(f"svd_{shard}", task).items()):
            f = RS.path(RECORDS) / "shards" / Path(r["args"]["shard_dir"]).name / "summary.json"
            mixes = json.loads(f.read_text(encoding="utf-8"))["label_histograms"]
            rows.append([studies.SHARDS[shard], seed,
                         *(" / ".join(str(m.get(k, 0)) for k in ("0", "1")) for m in mixes)])
    width = max((len(r) for r in rows), default=2) - 2
    return "\n".join(stats.markdown(["shards (label 0 / label 1 per client)", "seed",
                                      *(f"client {k + 1}" for k in range(width))], rows))


def not_yet(task: str = TASK) -> str:
    """What a task's blocks print until its records are committed: the commands that commit them."""
    return ("Records not committed yet: `python lora_glue_fl/run_grid.py --real_data_dir ../shared/data --out-dir "
            f"runs/lora_glue_minilm {COMMANDS[task]} --records lora_glue_fl/results/minilm_glue`, then `python -m "
            "common.results --write`.")


NOT_YET = not_yet()


def recorded(task: str = TASK) -> bool:
    """Whether the record folder holds the task's grid (selection.json names it)."""
    return (RS.path(RECORDS) / study.SELECTION_FILE).is_file() and bool(selection(task))


def committed(block, task: str = TASK):
    """``block``, or ``not_yet(task)`` while the record folder holds no grid of the task."""
    @functools.wraps(block)
    def written() -> str:
        return block() if recorded(task) else not_yet(task)
    return written


PER_TASK = {"table": dev_table, "contrasts": contrast_table, "seeds": seeds_table, "selection": selection_table,
            "plateau": plateau_table, "shards": shards_table}  # one function per table, of the task
BLOCKS = {name: committed(fn) for name, fn in {
    "sst2-table": dev_table, "sst2-contrasts": contrast_table, "sst2-seeds": seeds_table, "shards": shards_table,
    "selection": selection_table, "plateau": plateau_table, "sst2-findings": sst2_findings, "study": study_line,
    "grid-time": grid_time}.items()} | {
    **{f"mrpc-{name}": committed(functools.partial(fn, "mrpc"), "mrpc") for name, fn in PER_TASK.items()},
    "mrpc-findings": committed(mrpc_findings, "mrpc"), "mrpc-study": committed(functools.partial(study_line, "mrpc"),
                                                                             "mrpc")}
