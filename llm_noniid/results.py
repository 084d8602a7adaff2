"""The README blocks of llm_noniid's results, generated from the committed records of run_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/runs/<algorithm>_<partition>_k10_p1_lr0.01_j8_schedcosine_s<seed>/`` (args.json,
summary.json), the pretrained-LoRA regime's grid. A sentence about one method on every split is one Holm family
over those splits (``studies.SPLITS``), declared in ``studies.PRETRAINED_STUDY``.
``PRIVACY/<population>_eps<epsilon>_s<seed>/`` (args.json, summary.json, metrics.jsonl): privacy_study.py's runs, one
table whose comparisons to epsilon = inf are one Holm family. ``MCMAHAN/<arm>_s<seed>/``: mcmahan_study.py's runs,
one table beside McMahan et al. 2017's Table 2 rows (``PAPER``), its rates chosen by the runs in
``MCMAHAN_VALIDATION``, its plateau rule ``studies.MCMAHAN_PLATEAU``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from functools import cache

from common import clustering, plateau, stats, study_report
from common import results as RS
from common.errors import check
from common.study import SELECTION_FILE, candidate_key, choose, read_selection
from common.study import chosen as chosen_in
from llm_noniid import detector_study as DS
from llm_noniid import failure, studies
from llm_noniid import mcmahan_study as MS
from llm_noniid import privacy_study as PS
from llm_noniid import report as RP

RECORDS = "llm_noniid/results/pretrained/grid"
PRIVACY = "llm_noniid/results/privacy"
PRIVACY_VALIDATION = "llm_noniid/results/privacy_validation"  # the runs that chose the study's settings
POPULATIONS = {"roles": "1,166 roles", "synthetic10k": "10,000 synthetic", "few12": "12 roles (sample)",
               "roles-lr1": "1,166 roles, server rate 1"}
OWN_RATE = {"roles": "roles-lr1"}  # a population's noiseless run at the server rate validated without noise
SETTING = "k10_p1_lr0.01_j8_schedcosine"   # 10 clients, all in every round, the selected rate, 8 local steps


@cache
def arm(algorithm: str, split: str) -> dict:
    """{seed: final validation perplexity} of an arm's reported runs (not the longer _R300 continuations)."""
    return RS.by_seed(runs(algorithm, split), "final_val_ppl")


@cache
def runs(algorithm: str, split: str, budget: str = "") -> list[dict]:
    """An arm's reported runs, or at ``budget`` its continuations of the same seeds (``_R120``: twice the rounds)."""
    return RS.records(f"{RECORDS}/runs", f"{algorithm}_{split}_{SETTING}_s[0-9]" + (f"_{budget}" if budget else ""))


def _runs(name: str, budget: str = "") -> list[dict]:
    return runs(*name.split("_", 1), budget)


def plateau_note(name: str, _: str = "") -> list[str]:
    """Arm ``name``'s plateau by ``studies.PLATEAU`` (its runs against their R120 continuations where they exist)."""
    found = {r["args"]["seed"]: r["path"] for r in _runs(name)}
    longer = {r["args"]["seed"]: r["path"] for r in _runs(name, "R120")}
    return [n for n in [plateau.arm_note(studies.PLATEAU, found, longer)] if n]


def steps(name: str, _: str = "") -> dict:
    """{seed: local steps a client took over the run} (rounds times local steps a round): what the arms share."""
    return {r["args"]["seed"]: r["summary"]["rounds_done"] * r["summary"]["local_steps_per_round"]
            for r in _runs(name)}


@cache
def findings() -> dict:
    """{comparison: Finding} of ``studies.PRETRAINED_STUDY`` through ``common.study_report`` (each with its
    warnings)."""
    return study_report.compare(studies.PRETRAINED_STUDY, lambda name, _: arm(*name.split("_", 1)), plateau_note,
                                unit=" ppl", spent=steps)


def scaffold() -> str:
    """SCAFFOLD − FedAvg on every split, one Holm family over the splits (``studies.PRETRAINED_STUDY``'s): a warning
    beside a comparison (fewer than 3 seeds, compute, plateau), those every split shares said once."""
    found = {c: f for c, f in findings().items() if c.family != "topic skew"}
    common, each = study_report.shared(found.values())
    parts = [f"{studies.SPLITS[c.arm.split('_', 1)[1]]} {study_report.said(f, w)}" for (c, f), w in
             zip(found.items(), each)]
    text = (f"SCAFFOLD − FedAvg, final perplexity, Holm over the {len(found)} splits together: "
            + "; ".join(parts) + (f"; every split: {'; '.join(common)}" if common else ""))
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def study() -> str:
    """The top README's line for the pretrained-LoRA regime."""
    iid, topic = (stats.summarize(arm("fedavg", s).values()) for s in ("iid", "topic_a0.01"))
    skew = next(f for c, f in findings().items() if c.family == "topic skew")
    text = (f"FedAvg on topic skew α = 0.01 {topic.mean:.1f} ± {topic.sd:.1f} against {iid.mean:.1f} ± {iid.sd:.1f} "
            f"on iid shards (paired by seed: {study_report.said(skew)}); " + scaffold())
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def curve(run: dict) -> list[float]:
    """A run's test accuracy at each evaluation (percent), from its metrics.jsonl."""
    return [100 * r["test_accuracy"] for r in rows(run)]


def rows(run: dict) -> list[dict]:
    """A run's metrics.jsonl rows."""
    return [json.loads(x) for x in (run["path"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if x.strip()]


NAME = re.compile(r"(?P<pop>.+)_eps(?P<eps>[^_]+)(?:_R(?P<rounds>\d+))?_s(?P<seed>\d+)")


def privacy_runs(folder: str = PRIVACY) -> dict:
    """{(population, epsilon, rounds): [runs]} of the study's records
    (``<population>_eps<epsilon>[_R<rounds>]_s<seed>``, no R: ``privacy_study.ROUNDS``), each run with its accuracy
    curve ("curve"); a diverged run's "summary" is None (its summary.json says so, or an older record has none)."""
    out: dict = {}
    for path in sorted(RS.path(folder).glob("*_eps*_s*")):
        r = RS.record(path)
        if r["summary"] is not None and r["summary"].get("status") == "diverged":
            r["summary"] = None  # diverged: summary.json says where, and has no final accuracy (rows up to there kept)
        m = NAME.fullmatch(r["name"])
        r["curve"] = curve(r)
        eps = math.inf if m["eps"] == "inf" else float(m["eps"])
        out.setdefault((m["pop"], eps, int(m["rounds"] or PS.ROUNDS)), []).append(r)
    return {k: out[k] for k in sorted(out, key=lambda k: (list(POPULATIONS).index(k[0]), k[1], k[2]))}


def final(run: dict) -> float:
    """A run's final test accuracy (a fraction); nan for a diverged run."""
    return math.nan if run["summary"] is None else run["summary"]["final_test_accuracy"]


def eps_cell(runs: list[dict]) -> str:
    """'3.00 (δ 4.2e-04)': the epsilon the accountant reached at the run's end (its largest over seeds) at delta."""
    s = runs[0]["summary"]
    eps = max(r["summary"]["dp_epsilon"] for r in runs)
    return ("∞" if math.isinf(eps) else f"{eps:.2f}") + f" (δ {s['dp_delta']:.1e})"


def accuracies(runs: dict) -> dict:
    """{(population, epsilon, rounds): {seed: final test accuracy %}} (nan: diverged)."""
    return {k: {r["args"]["seed"]: 100 * final(r) for r in g} for k, g in runs.items()}


def budget_pairs(acc: dict) -> dict:
    """{(population, epsilon, rounds): (accuracy at rounds, the same arm's at ``privacy_study.ROUNDS``)} for every
    longer budget: the longer budget's gain, one Holm family of its own."""
    return {(pop, eps, n): (a, acc[(pop, eps, PS.ROUNDS)]) for (pop, eps, n), a in acc.items()
            if n != PS.ROUNDS and (pop, eps, PS.ROUNDS) in acc}


def continuation(runs: dict, key: tuple) -> int | None:
    """The rounds of arm ``key``'s next longer budget, None when it has none: for the noiseless arm the same run
    read longer, for a private one the same epsilon spent over more rounds (a new run, z solved for its length;
    ``privacy_study.PLATEAU``)."""
    pop, eps, n = key
    longer = sorted(m for p, e, m in runs if (p, e) == (pop, eps) and m > n)
    return longer[0] if longer else None


def judged_by(runs: dict, key: tuple) -> int | None:
    """The rounds of the continuation that ``verdicts`` judged arm ``key`` by; None when it judged by the best
    evaluation's place."""
    rounds = continuation(runs, key)
    return rounds if rounds is not None and sum(r["summary"] is not None for r in runs[key]) >= 2 else None


def verdicts(runs: dict, key: tuple) -> dict[int, plateau.Judged]:
    """{seed: the plateau verdict} of arm ``key``'s runs that did not diverge, by ``privacy_study.PLATEAU``: against
    the same run continued to the next longer budget where one was recorded, else by where its best evaluation is."""
    g = {r["args"]["seed"]: r["path"] for r in runs[key] if r["summary"] is not None}
    rounds = judged_by(runs, key)
    if rounds is None:
        return plateau.judge_arm(PS.PLATEAU, g)
    rule = dataclasses.replace(PS.PLATEAU, check_budget=f"{rounds} rounds", tolerance=PS.PLATEAU_SD)
    longer = {r["args"]["seed"]: r["path"] for r in runs[(key[0], key[1], rounds)] if r["summary"] is not None}
    return plateau.judge_arm(rule, g, longer)


def plateau_cell(all_runs: list[dict], judged: dict[int, plateau.Judged]) -> str:
    """'1/3 (2 still improving)': how many runs are at their plateau (``judged``: ``verdicts``), the others by why
    not: still improving, not checked (too few evaluations), not above the majority character (a flat run has not
    started to learn), diverged."""
    g = [r for r in all_runs if r["summary"] is not None]
    flat = sum(r["summary"]["final_test_accuracy"] <= r["summary"]["majority_accuracy"] for r in g)
    states = [judged[r["args"]["seed"]].state for r in g
              if r["summary"]["final_test_accuracy"] > r["summary"]["majority_accuracy"]]
    improving, unchecked = states.count("still improving"), states.count("not checked")
    return (f"{states.count('at plateau')}/{len(all_runs)}" + (f" ({improving} still improving)" if improving else "")
            + (f" ({unchecked} not checked)" if unchecked else "")
            + (f" ({flat} not above the majority character)" if flat else "")
            + (f" ({len(all_runs) - len(g)} diverged)" if len(g) < len(all_runs) else ""))


def privacy_table(folder: str = PRIVACY) -> str:
    """The privacy-utility table: per population, epsilon and budget the noise multiplier, expected cohort, rounds,
    final test accuracy over seeds, its paired difference to epsilon = inf at the same budget (one Holm family), a
    longer budget's gain over the same arm at ``privacy_study.ROUNDS`` (another), best - last and the plateau rule;
    the references below."""
    runs = privacy_runs(folder)
    acc = accuracies(runs)
    fam, longer = equal_rounds_family(acc), stats.compare(budget_pairs(acc))

    def diff(pop: str, eps: float, n: int, ref: str | None) -> str:
        return fam[(pop, eps, n, ref)][1] if (pop, eps, n, ref) in fam else "reference" if ref == pop else "–"

    rows = []
    for (pop, eps, n), all_runs in runs.items():
        g = [r for r in all_runs if r["summary"] is not None]  # the diverged ones count in the accuracy cell
        gain = longer[(pop, eps, n)][1] if (pop, eps, n) in longer else "–"
        if not g:
            rows.append([POPULATIONS.get(pop, pop), f"{eps:g}", *["–"] * 2, n,
                         stats.fmt_seeds(acc[(pop, eps, n)].values()), "–", "–", gain, "–", plateau_cell(all_runs, {})])
            continue
        s = g[0]["summary"]
        best_gap = stats.summarize(max(r["curve"]) - r["curve"][-1] for r in g)
        rows.append([POPULATIONS.get(pop, pop), eps_cell(g), f"{s['dp_noise']:.3g}",
                     f"{s['dp_expected_cohort']:.0f} (q {s['dp_rate']:.2g})", n,
                     stats.fmt_seeds(acc[(pop, eps, n)].values()), diff(pop, eps, n, pop),
                     diff(pop, eps, n, OWN_RATE.get(pop)), gain, f"{best_gap.mean:.1f}",
                     plateau_cell(all_runs, verdicts(runs, (pop, eps, n)))])
    refs: dict = {}  # each seed scores its own test subset: the references' mean over a population's runs
    for (pop, *_), g in runs.items():
        if pop not in OWN_RATE.values():
            refs.setdefault(pop, []).extend(r["summary"] for r in g if r["summary"] is not None)
    refs = {p: {k: sum(s[k] for s in ss) / len(ss) for k in ("majority_accuracy", "uniform_accuracy")}
            for p, ss in refs.items()}
    lines = stats.markdown(["clients", "ε (δ)", "noise z", "expected cohort", "rounds", "test accuracy %",
                            "− ε = ∞, points [95% CI]", "− ε = ∞ at server rate 1",
                            f"− same arm at {PS.ROUNDS} rounds", "best − last", "at plateau"], rows)
    ref = "; ".join(f"{POPULATIONS.get(p, p)}: majority character {100 * s['majority_accuracy']:.1f} %, "
                    f"uniform {100 * s['uniform_accuracy']:.1f} %" for p, s in refs.items())
    m = sum(d.n >= 2 for d, _ in fam.values())
    budget = (f"; the longer budgets against {PS.ROUNDS} rounds, paired by seed, Holm over their "
              f"{sum(d.n >= 2 for d, _ in longer.values())} comparisons" if longer else "")
    return minus("\n".join(lines) + f"\n\nReferences on each test set: {ref}. Differences to ε = ∞ paired by seed at "
                 f"equal rounds, Holm over the table's {m} comparisons{budget}; at plateau: every rate is constant, "
                 "so a run is still improving when its best evaluation is its last or when the mean of its last "
                 "third of evaluations is above the third before's by more than "
                 f"{PS.PLATEAU_Z:g} standard errors (the noise of one evaluation from the sd of successive "
                 "differences), except that an arm with a longer budget is judged by it: still improving when the "
                 f"same seed's run at the next longer budget ends more than {PS.PLATEAU_SD:g} sd of the seeds' final "
                 "accuracy higher (for ε = ∞ the same run read longer; for a private arm the same ε spent over more "
                 "rounds, a new run: at plateau there means more rounds at that ε buy nothing at these rates); and "
                 "the run ends above the majority character (a flat run at the reference has not started to learn).")


def minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def noise_ratio(s: dict) -> float:
    """The noise's L2 norm on the mean, z C sqrt(d) / (q N), in units of C (the largest a mean of clipped updates
    can be): above 1 a round's noise outweighs any update."""
    return s["dp_noise"] * math.sqrt(s["trainable_params"]) / s["dp_expected_cohort"]


def eps_name(eps: float) -> str:
    return "∞" if math.isinf(eps) else f"{eps:g}"


def privacy_findings(folder: str = PRIVACY) -> str:
    """The study's sentences: per population the noise against the signal and the seeds above the majority
    character at ``privacy_study.ROUNDS``; then per longer budget what it gained, which arms reached their plateau,
    and, when the noiseless arm did not, that no difference in the table is one at the plateau."""
    every = privacy_runs(folder)
    runs = {k: [r for r in g if r["summary"] is not None] for k, g in every.items()}
    runs = {k: g for k, g in runs.items() if g}
    parts = []
    for pop in POPULATIONS:
        private = [(eps, g) for (p, eps, n), g in runs.items() if p == pop and n == PS.ROUNDS and not math.isinf(eps)]
        if not private:
            continue
        s0 = private[0][1][0]["summary"]
        n = s0["clients"]
        ratios = ", ".join(f"{noise_ratio(g[0]['summary']):.1f} at ε = {eps:g}" for eps, g in private)
        above = ", ".join(f"{sum(r['summary']['final_test_accuracy'] > r['summary']['majority_accuracy'] for r in g)}"
                          f"/{len(g)} at ε = {eps_name(eps)}"
                          for (p, eps, rounds), g in runs.items() if p == pop and rounds == PS.ROUNDS)
        parts.append(f"{POPULATIONS[pop]} (N = {n:,}, δ = 1/N^1.1 = {s0['dp_delta']:.1e}): the noise's norm on the "
                     f"mean is {ratios} times C (d = {s0['trainable_params']:,} parameters, expected cohort "
                     f"{s0['dp_expected_cohort']:.0f}); seeds ending above the majority character at {PS.ROUNDS} "
                     f"rounds: {above}.")
    parts += [budget_findings(every, pop) for pop in POPULATIONS
              if pop not in OWN_RATE.values() and len({n for p, _, n in every if p == pop}) > 1]
    return minus(" ".join(parts))


def equal_rounds_family(acc: dict) -> dict:
    """The table's Holm family: each (population, epsilon, rounds) against its population's noiseless run and the
    noiseless run at its own server rate at equal rounds, keyed (population, epsilon, rounds, reference's
    population); ``stats.compare``'s (Paired, cell) each."""
    pairs = {}
    for pop, eps, n in acc:
        refs = [(pop, math.inf, n), (OWN_RATE.get(pop), math.inf, n)]
        pairs |= {(pop, eps, n, ref[0]): (acc[(pop, eps, n)], acc[ref]) for ref in refs
                  if ref in acc and ref != (pop, eps, n) and not (math.isinf(eps) and ref[0] == pop)}
    return stats.compare(pairs)


def at_plateau(every: dict, key: tuple) -> bool:
    """Every seed of arm ``key`` ran to its end above the majority character and is at its plateau by the rule."""
    judged = verdicts(every, key)
    return bool(every[key]) and all(
        r["summary"] is not None and r["summary"]["final_test_accuracy"] > r["summary"]["majority_accuracy"]
        and judged[r["args"]["seed"]].state == "at plateau" for r in every[key])


def budget_findings(every: dict, pop: str) -> str:
    """Population ``pop``'s arms across its budgets: final accuracy at each, the plateau rule's count at each (a
    budget judged by the next longer one, the longest by its own curve), and where a private arm is at its plateau,
    its difference to the non-private runs at equal rounds (the table's Holm family) and whether they are at theirs."""
    acc = accuracies(every)
    own = OWN_RATE.get(pop)
    budgets = sorted({n for p, _, n in every if p == pop})
    arms = [(pop, eps) for eps in sorted({e for p, e, _ in every if p == pop})] + \
        ([(own, math.inf)] if any(p == own for p, _, _ in every) else [])

    def name(p: str, eps: float) -> str:
        return f"ε = {eps_name(eps)}" + (f" at server rate {PS.NONPRIVATE_SERVER_LR}" if p == own else "")

    def row(p: str, eps: float, cell) -> str:
        return f"{name(p, eps)}: " + ", ".join(f"{cell((p, eps, n))} at {n}" for n in budgets if (p, eps, n) in every)

    def mean(key: tuple) -> str:
        ok = [v for v in acc[key].values() if math.isfinite(v)]
        return f"{sum(ok) / len(ok):.1f}" if ok else "diverged"

    def count(key: tuple) -> str:
        return plateau_cell(every[key], verdicts(every, key)).split(" ", 1)[0]

    means, counts = "; ".join(row(*a, mean) for a in arms), "; ".join(row(*a, count) for a in arms)
    text = (f"{POPULATIONS[pop]} at {', '.join(map(str, budgets))} rounds (every rate constant; a private arm at each "
            f"budget is a new run, z solved for its length): final test accuracy %, mean over seeds: {means}. "
            f"Runs at their plateau by the rule (a budget judged by the same seed at the next longer one, the longest "
            f"by its own curve): {counts}.")
    same = [repeats([r for r in every[(pop, math.inf, n)] if r["summary"]],
                    [r for r in every[(pop, math.inf, PS.ROUNDS)] if r["summary"]])
            for n in budgets[1:] if (pop, math.inf, n) in every and (pop, math.inf, PS.ROUNDS) in every]
    if same and all(x is not None and x[0] == x[1] for x in same):
        text += (f" The noiseless runs at every longer budget repeat the {PS.ROUNDS}-round ones' evaluations exactly "
                 f"up to round {PS.ROUNDS} (every seed), so for ε = ∞ the budgets are one run read at several lengths.")
    fam = equal_rounds_family(acc)
    m = sum(d.n >= 2 for d, _ in fam.values())
    costs = []
    for eps in sorted(e for p, e in arms if p == pop and math.isfinite(e)):
        first = next((n for n in budgets if (pop, eps, n) in every and at_plateau(every, (pop, eps, n))), None)
        if first is None:
            costs.append(f"ε = {eps_name(eps)} is at its plateau at no budget")
            continue
        refs = [(p, e) for p, e in arms if math.isinf(e) and (pop, eps, first, p) in fam]
        said = "; ".join(f"against {name(p, e)} "
                         f"{'(at its plateau)' if at_plateau(every, (p, e, first)) else '(itself not at its plateau)'} "
                         f"{stats.claim(*stats_verdict(fam, (pop, eps, first, p)), m, unit=' points')}"
                         for p, e in refs)
        costs.append(f"ε = {eps_name(eps)} from {first} rounds ({mean((pop, eps, first))} %), {said}")
    longer = [r for (p, _, n), g in every.items() if p in (pop, own) and n != PS.ROUNDS for r in g if r["summary"]]
    secs = stats.summarize(r["summary"]["wall_seconds"] / r["summary"]["rounds_done"] for r in longer)
    text += (f" The {len(longer)} finished runs longer than {PS.ROUNDS} rounds took "
             f"{sum(r['summary']['wall_seconds'] for r in longer) / 3600:.1f} h of wall time in all, {secs.mean:.2f} "
             f"± {secs.sd:.2f} s a round (one thread each, on a 2-core machine shared with other runs; summary.json).")
    holm = f"Holm over its {m}" if m >= 2 else "one comparison, no correction"
    text += (" Where each private arm first reaches its plateau in every seed, its cost against the non-private "
             f"runs at equal rounds (the table's differences, {holm}): " + "; ".join(costs) + ".")
    return text


def stats_verdict(fam: dict, key) -> tuple:
    """(Paired, Verdict) of one comparison of a ``stats.compare`` family, for ``stats.claim``."""
    d = fam[key][0]
    diffs = {k: v[0] for k, v in fam.items()}
    return d, stats.holm(diffs)[key]


def repeats(long: list[dict], short: list[dict]) -> tuple[int, int] | None:
    """(how many seeds' long runs score exactly what their short run scored at each of its evaluations, how many
    seeds both have); None when none has both."""
    by_seed = {r["args"]["seed"]: r for r in short}
    pairs = [(r, by_seed[r["args"]["seed"]]) for r in long if r["args"]["seed"] in by_seed]
    if not pairs:
        return None
    last = PS.ROUNDS

    def head(run):
        return [(x["round"], x["test_accuracy"], x.get("test_loss")) for x in rows(run) if x["round"] <= last]

    return sum(head(a) == head(b) for a, b in pairs), len(pairs)


def privacy_validation(folder: str = PRIVACY_VALIDATION) -> str:
    """The runs on the validation split (``shakespeare.py --eval-split validation``, seed 0, the 1,166 roles) that
    chose the study's clip, server step, cohort and local steps: their settings, validation accuracy every 10
    rounds, and the median pre-clip update norm at the last evaluation. Runs stopped by hand (no summary) count:
    what they showed by then decided."""
    rows = []
    for path in sorted(RS.path(folder).iterdir()):
        a = json.loads((path / "args.json").read_text(encoding="utf-8"))["args"]
        log = [json.loads(x) for x in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        server = a["server_opt"] + (f" β {a['server_momentum']:g}" if a["server_opt"] == "fedavgm" else "")
        dp = "no noise" if a.get("dp_noise") == 0 else f"ε {a['dp_epsilon']:g}"
        norms = sorted(log[-1]["dp_norm"].values())
        curve = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in log if r["round"] % 10 == 0)
        rows.append([path.name, f"{server}, lr {a['server_lr']:g}", a["clients_per_round"], a["max_local_steps"],
                     f"C {a['dp_clip']:g}, {dp}", f"{log[-1]['round']}/{a['rounds']}", curve,
                     f"{norms[len(norms) // 2]:.2f}"])
    return minus("\n".join(stats.markdown(["run", "server step", "expected cohort", "local steps", "DP",
                                           "rounds run", "validation accuracy % every 10 rounds",
                                           "median update norm"], rows)))


# ------------------------------------------------------------------------- McMahan et al. 2017's table
MCMAHAN = "llm_noniid/results/mcmahan"
MCMAHAN_VALIDATION = "llm_noniid/results/mcmahan_validation"
# McMahan et al. 2017 (AISTATS; arXiv:1602.05629), Table 2, Shakespeare LSTM, rounds to 54 % test accuracy at
# C = 0.1: (E, B (0: inf), u = E n / B, rounds on the roles (non-IID), rounds on the IID reshuffle); the paper prints
# each speed-up over FedSGD (the first row), which these rounds reproduce to its one decimal
PAPER_TARGET = 54
MCMAHAN_TARGET = 28  # test accuracy % the study counts rounds to: one FedSGD reaches here (llm_noniid/README.md)
PAPER = [(1, 0, 1.0, 3906, 2488), (1, 50, 1.5, 549, 1635), (5, 0, 5.0, 597, 613), (1, 10, 7.4, 164, 460),
         (5, 50, 7.4, 152, 401), (5, 10, 37.1, 41, 192)]


def rounds_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated round whose accuracy is at least ``target`` ([(round, accuracy)], same units); None when
    the run never reaches it."""
    return next((r for r, a in curve if a >= target), None)


def mcmahan_runs(folder: str = MCMAHAN) -> dict:
    """{arm: [runs]} of the study's records (``<arm>_s<seed>``), each run with its [(round, accuracy %)] curve."""
    out: dict = {}
    for r in RS.records(folder, "*_s[0-9]*"):
        rows = [json.loads(x) for x in (r["path"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                if x.strip()]
        r["points"] = [(row["round"], 100 * row["test_accuracy"]) for row in rows]
        out.setdefault(r["name"].rsplit("_s", 1)[0], []).append(r)
    return out


def speedup(base: dict, arm: dict) -> str:
    """FedSGD's rounds to target over the arm's, paired by seed (the same initial model and cohorts): the geometric
    mean with its 95 % t interval over the seeds where both reached it; a seed where only the arm reached it gives
    a lower bound (FedSGD's rounds run over the arm's rounds)."""
    both = {s: base[s][0] / arm[s][0] for s in arm if s in base and base[s][0] and arm[s][0]}
    bound = [base[s][1] / arm[s][0] for s in arm if s in base and base[s][0] is None and arm[s][0]]
    text = "–"
    if both:
        g = stats.summarize(math.log(v) for v in both.values())
        text = f"{math.exp(g.mean):.1f}x" + (f" [{math.exp(g.lo):.1f}, {math.exp(g.hi):.1f}]" if g.n >= 2 else "")
        text += f" (n={g.n})"
    if bound:
        text = (text + "; " if both else "") + f"> {min(bound):.1f}x in {len(bound)} seed(s) FedSGD did not reach"
    return text


def mcmahan_arms(folder: str = MCMAHAN) -> tuple[dict, dict]:
    """({(E, B): (arm name, runs)}, {(E, B): {seed: (rounds to the target or None, rounds run)}}) of the records."""
    here = {}
    for name, g in mcmahan_runs(folder).items():
        a = g[0]["args"]
        here[(a["local_epochs"], a["batch_size"])] = (name, g)
    reach = {key: {r["args"]["seed"]: (rounds_to(r["points"], MCMAHAN_TARGET), r["summary"]["rounds_done"])
                   for r in g} for key, (_, g) in here.items()}
    return here, reach


def fallen(g: list[dict]) -> list[dict]:
    """The runs that learned, then ended at or below the majority character."""
    return [r for r in g if r["points"][-1][1] <= 100 * r["summary"]["majority_accuracy"]
            < max(a for _, a in r["points"])]


def mcmahan_table(folder: str = MCMAHAN) -> str:
    """The paper's rows beside this project's: per (E, B) the paper's u, rounds to 54 % and speed-up, and here the
    arm's u, rate, rounds run, rounds to the study's target per seed, speed-up over FedSGD, final accuracy, best -
    last and the plateau rule; the references and the target below."""
    runs = mcmahan_runs(folder)
    here, reach = mcmahan_arms(folder)
    target = MCMAHAN_TARGET
    base = reach.get((1, 0), {})
    keys = [(e, b) for e, b, *_ in PAPER] + sorted(k for k in here if k not in [(e, b) for e, b, *_ in PAPER])
    paper = {(e, b): (u, non, iid) for e, b, u, non, iid in PAPER}
    rows = []
    for key in keys:
        e, b = key
        left = [f"{paper[key][0]:g}", f"{paper[key][1]:,} ({paper[key][2]:,})",
                "FedSGD" if key == (1, 0) else f"{paper[(1, 0)][1] / paper[key][1]:.1f}x"] if key in paper else [
            "–"] * 3
        if key not in here:
            rows.append([e, "∞" if not b else b, *left, *["not run"] + ["–"] * 8])
            continue
        name, g = here[key]
        a, s = g[0]["args"], g[0]["summary"]
        u = e if not b else e * s["train_samples"] / s["clients"] / b  # the paper's u = E n / B, n the mean role
        per_seed = sorted(reach[key].items())
        got = [v for _, (v, _) in per_seed if v is not None]
        cell = ", ".join(str(v) if v is not None else f"> {n}" for _, (v, n) in per_seed)
        if len(got) >= 2:
            m = stats.summarize(got)
            cell = f"{m.mean:.0f} ± {m.sd:.0f} ({cell})"
        gap = stats.summarize(max(a for _, a in r["points"]) - r["points"][-1][1] for r in g)
        fell = fallen(g)
        judged = [studies.MCMAHAN_PLATEAU.judge([a for _, a in r["points"]]).state for r in g if r not in fell]
        improving, unchecked = judged.count("still improving"), judged.count("not checked")
        rows.append([e, "∞" if not b else b, *left, f"{u:.1f}", f"{a['learning_rate']:g}", s["rounds_done"], cell,
                     "FedSGD" if key == (1, 0) else speedup(base, reach[key]),
                     stats.fmt_seeds(100 * r["summary"]["final_test_accuracy"] for r in g), f"{gap.mean:.1f}",
                     f"{sum(r['summary']['round_seconds'] / r['summary']['rounds_done'] for r in g) / len(g):.2f}",
                     f"{judged.count('at plateau')}/{len(g)}"
                     + (f" ({improving} still improving)" if improving else "")
                     + (f" ({unchecked} not checked)" if unchecked else "")
                     + (f" ({len(fell)} fell to the majority character or below)" if fell else "")])
    lines = stats.markdown(["E", "B", "paper u", f"paper rounds to {PAPER_TARGET} %, roles (IID)", "paper speed-up",
                            "here u", "here η", "rounds run", f"here rounds to {target:g} % (per seed)",
                            "speed-up [95% CI]", "test accuracy % at the end", "best − last", "s a round",
                            "at plateau"], rows)
    summaries = [r["summary"] for g in runs.values() for r in g]
    refs = ""
    if summaries:
        refs = (f"References on the scored test windows: majority character "
                f"{100 * sum(x['majority_accuracy'] for x in summaries) / len(summaries):.1f} %, uniform "
                f"{100 * summaries[0]['uniform_accuracy']:.1f} %. ")
    return minus("\n".join(lines) + f"\n\n{refs}Rounds to target: the first evaluation at or above it (a seed that "
                 "never reached it: > its rounds); speed-up: FedSGD's rounds over the arm's, paired by seed (same "
                 "initial model, same cohorts), geometric mean and 95 % t interval; s a round: a round's wall time "
                 "without evaluation (local training and aggregation) on a shared 2-core machine; at plateau: the "
                 "best evaluation is not the last and the mean of the last third of evaluations is within "
                 f"{studies.MCMAHAN_Z:g} standard errors of the third before's (the noise of one evaluation from the "
                 "sd of successive differences); a run that ends at or below the majority character after learning has "
                 "fallen, not plateaued.")


def arm_name(key: tuple[int, int]) -> str:
    e, b = key
    return "FedSGD" if key == (1, 0) else f"E = {e}, B = {'∞' if not b else b}"


def mcmahan_findings(folder: str = MCMAHAN) -> str:
    """The reading's numbers, from the same records as the table: FedSGD's spread of rounds to the target, each
    FedAvg arm's speed-up and whether its interval excludes 1, the paper's speed-ups for the rows run, the plateau
    rule's outcome per arm, the runs that fell, and the runs' wall time (summary.json)."""
    here, reach = mcmahan_arms(folder)
    if (1, 0) not in here:
        return "(records not committed yet)"
    base = reach[(1, 0)]
    sgd = sorted(v for v, _ in base.values() if v is not None)
    paper = {(e, b): non for e, b, _, non, _ in PAPER}
    text = [f"FedSGD reaches {MCMAHAN_TARGET} % in {sgd[0]} to {sgd[-1]} rounds over its {len(base)} seeds"
            + (f" ({len(base) - len(sgd)} never)" if len(sgd) < len(base) else "") + "."]
    faster = []
    for key in sorted(k for k in here if k != (1, 0)):
        ratios = [base[s][0] / v for s, (v, _) in reach[key].items() if v and base.get(s, (None,))[0]]
        if len(ratios) < 2:
            continue
        g = stats.summarize(math.log(v) for v in ratios)
        faster.append((math.exp(g.mean), key, g.lo > 0))
    if faster:
        text.append("Speed-up over FedSGD (geometric mean over seeds): " + "; ".join(
            f"{arm_name(k)} {m:.1f}x, its 95 % interval " + ("above 1" if above else "including 1")
            for m, k, above in sorted(faster, reverse=True)) + f". Fastest: {arm_name(max(faster)[1])}.")
        shown = [paper[(1, 0)] / paper[k] for _, k, _ in faster if k in paper]
        if shown:
            text.append(f"The paper's speed-ups for the rows run here: {min(shown):.1f}x to {max(shown):.1f}x.")
    plateau_parts, fell_parts = [], []
    for key in sorted(here, key=lambda k: (k != (1, 0), k)):
        _, g = here[key]
        fell = fallen(g)
        states = [studies.MCMAHAN_PLATEAU.judge([a for _, a in r["points"]]).state for r in g if r not in fell]
        rounds = g[0]["summary"]["rounds_done"]
        plateau_parts.append(f"{arm_name(key)} {states.count('at plateau')}/{len(g)} at {rounds} rounds")
        if fell:
            fell_parts.append(f"{arm_name(key)} seed {', '.join(str(r['args']['seed']) for r in fell)}")
    text.append("At plateau by the rule: " + "; ".join(plateau_parts) + ".")
    longer = []  # the second budget: the same runs read at the first grid's rounds (a constant rate repeats them)
    for key in sorted(here, key=lambda k: (k != (1, 0), k)):
        name, g = here[key]
        arm = MS.ARMS.get(name)
        if arm is None or any(r["summary"]["rounds_done"] != arm.rounds for r in g):
            continue  # records of another grid than the one declared
        short = arm.rounds // MS.LONGER
        at = {r["args"]["seed"]: next((a for rnd, a in r["points"] if rnd == short), None) for r in g}
        gain = [r["points"][-1][1] - at[r["args"]["seed"]] for r in g if at[r["args"]["seed"]] is not None]
        if MS.LONGER > 1 and len(gain) >= 2:
            m = stats.summarize(gain)
            longer.append(f"{arm_name(key)} {stats.fmt_seeds(at.values())} at {short} rounds, "
                          f"{m.mean:+.1f} [{m.lo:+.1f}, {m.hi:+.1f}] points by {short * MS.LONGER}")
    if longer:
        text.append(f"Test accuracy % at the first grid's rounds and its change at {MS.LONGER}x them (the same "
                    "runs, paired by seed): " + "; ".join(longer) + ".")
    text.append("Fell to the majority character or below after learning: "
                + ("; ".join(fell_parts) if fell_parts else "none") + ".")
    wall = {k: sum(r["summary"]["wall_seconds"] for r in g) / 60 for k, (_, g) in here.items()}
    count = {k: len(g) for k, (_, g) in here.items()}
    text.append(f"Wall time, summed over the runs' summaries (one thread a run, on a 2-core machine shared with "
                f"other work): the {sum(c for k, c in count.items() if k != (1, 0))} FedAvg runs "
                f"{sum(w for k, w in wall.items() if k != (1, 0)):.1f} min, the {count[(1, 0)]} FedSGD runs "
                f"{wall[(1, 0)]:.1f} min.")
    return minus(" ".join(text))


def mcmahan_validation(folder: str = MCMAHAN_VALIDATION) -> str:
    """The runs on the validation split (seed 0) that chose each arm's rate and the target: E, B, rate, rounds,
    validation accuracy at up to 8 evaluations (the last included), its best, and the rounds to the target."""
    rows = []
    for path in sorted(RS.path(folder).iterdir()):
        a = json.loads((path / "args.json").read_text(encoding="utf-8"))["args"]
        log = [json.loads(x) for x in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        step = max(1, -(-len(log) // 8))
        curve = ", ".join(f"{r['round']}: {100 * r['test_accuracy']:.1f}" for r in log[::-1][::step][::-1])
        hit = rounds_to([(r["round"], 100 * r["test_accuracy"]) for r in log], MCMAHAN_TARGET)
        rows.append([path.name, a["local_epochs"], "∞" if not a["batch_size"] else a["batch_size"],
                     f"{a['learning_rate']:g}", f"{log[-1]['round']}/{a['rounds']}", curve,
                     f"{max(100 * r['test_accuracy'] for r in log):.1f}", hit if hit else f"> {log[-1]['round']}"])
    return minus("\n".join(stats.markdown(["run", "E", "B", "η", "rounds run", "validation accuracy % (round: acc)",
                                           "best", f"rounds to {MCMAHAN_TARGET} %"], rows)))


def mcmahan_choice(folder: str = MCMAHAN_VALIDATION) -> str:
    """Each arm's rate as the validation runs chose it (``common.study.choose``: the fewest rounds to the target, a run
    that never reached it scoring nothing), every rate tried with its rounds, and whether the choice is inside the
    rates tried or at their edge."""
    arms: dict = {}
    for path in sorted(RS.path(folder).iterdir()):
        a = json.loads((path / "args.json").read_text(encoding="utf-8"))["args"]
        log = [json.loads(x) for x in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        hit = rounds_to([(r["round"], 100 * r["test_accuracy"]) for r in log], MCMAHAN_TARGET)
        fell = log[-1]["round"] < a["rounds"]  # stopped by hand
        arms.setdefault((a["local_epochs"], a["batch_size"]), {})[a["learning_rate"]] = (hit, log[-1]["round"], fell)
    parts = []
    for (e, b), tried in sorted(arms.items(), key=lambda kv: (kv[0][1] != 0 or kv[0][0] != 1, kv[0])):
        pick = choose({lr: [math.nan if hit is None else float(hit)] for lr, (hit, _, _) in tried.items()}, "min")
        name = "FedSGD" if (e, b) == (1, 0) else f"FedAvg E = {e}, B = {'∞' if not b else b}"
        where = {None: "inside the rates tried", "high": "the largest rate tried", "low": "the smallest rate tried"}
        others = "; ".join(f"{lr:g}: " + (f"{hit}" if hit is not None else f"not reached in {last}"
                                           + (", stopped by hand" if fell else ""))
                           for lr, (hit, last, fell) in sorted(tried.items()) if lr != pick.value)
        parts.append(f"{name}: {pick.value:g} ({tried[pick.value][0]} rounds to {MCMAHAN_TARGET} %; {others}), "
                     f"{where[pick.edge]}")
    return minus(". ".join(parts) + ".")


BASE = "llm_noniid/results/pretrained/base"  # pretrain.json of the regime's base (studies.BASE_FLAGS)


def base() -> str:
    """The pretrained regime's base: its size and test perplexity beside the unigram and uniform guesses, from the
    committed pretrain.json (``python llm_noniid/pretrain.py --n-layer 2 --n-embd 128 --n-head 2 --vocab-size 2048``
    with one torch thread rebuilds it), and whether its best validation point is its last."""
    info = json.loads((RS.path(BASE) / "pretrain.json").read_text(encoding="utf-8"))
    s, hist = info["settings"], info["history"]
    last = hist[-1]["step"] == info["best_step"]
    gain = (hist[-2]["val_ppl"] - hist[-1]["val_ppl"]) / hist[-2]["val_ppl"] * 100 if len(hist) > 1 else 0.0
    return (f"The base ([`{BASE.split('/', 1)[1]}/pretrain.json`]({BASE.split('/', 1)[1]}/pretrain.json)): a "
            f"{s['n_layer']}-layer GPT-2 of width {s['n_embd']}, BPE {s['vocab_size']:,} ({info['params'] / 1e6:.2f} M "
            f"parameters), {s['steps']:,} steps on {info['train_tokens']:,} training tokens of "
            f"{info['articles']['train']} WikiText-2 articles; test perplexity {info['test_ppl']:.1f} on its "
            f"{info['articles']['test']} test articles (unigram {info['unigram_ppl']:.1f}, uniform "
            f"{info['uniform_ppl']:,.0f}). "
            + (f"Its best validation point is its last step (−{gain:.1f} % over the last {s['eval_every']} steps): "
               "the base is still improving, and the study fine-tunes it as it is. " if last else "")
            + f"Pretrained with {s['torch_threads']} torch thread in {info['wall_seconds_last_session'] / 60:.1f} min "
            f"wall, {info['cpu_seconds_last_session']:.0f} s CPU (load {info['load_start']:.1f} to "
            f"{info['load_end']:.1f}).")


def detectors() -> str:
    """The failure detectors out of sample (``detector_study.report``): thresholds chosen on the pretrained grid's
    runs, hit and false-alarm rates on the held-out seeds' records."""
    return minus(DS.report())


# ----------------------------------------------------------------------------- the grids' reports (report.py)
SCRATCH = "llm_noniid/results/ag_news/grid"  # the from-scratch study's headline arms: the records kept of its grids
SCRATCH_REPORT = "results/ag_news/report.md"  # its full failure, main and calibrate grids (their records not kept)
IID, TOPIC, IFCA = "iid", "topic a=0.01", "FedAvg + IFCA (4)"
REGIMES = {"from scratch": SCRATCH, "pretrained + LoRA": RECORDS}  # the side by side's regimes and their grids


@dataclasses.dataclass(frozen=True)
class Table:
    """One Markdown table of a report as written: its headers and its rows of cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def cell(self, header: str, *labels: str, nth: int = 0) -> str:
        """The cell under the ``nth`` column named ``header`` (a grid table has two 'Δ vs FedAvg') of the first row
        whose leading cells are ``labels``."""
        cols = [i for i, h in enumerate(self.headers) if h == header]
        rows = [r for r in self.rows if r[:len(labels)] == labels]
        check(len(cols) > nth and bool(rows), f"no cell {header!r} in row {' / '.join(labels)} of the report's "
              f"table ({', '.join(self.headers)})")
        return rows[0][cols[nth]]

    def arms(self, partition: str) -> list[str]:
        """The arms (second column) of a grid table's rows on ``partition``, in the table's order."""
        return [r[1] for r in self.rows if r[0] == partition]


def tables(lines: list[str]) -> list[Table]:
    """The Markdown tables among ``lines``, in order."""
    out, block = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append(tuple(c.strip() for c in line.strip()[1:-1].split("|")))
        elif block:
            out.append(Table(block[0], tuple(block[2:])))
            block = []
    return out


@cache
def report(grid: str) -> dict[str, list[Table]]:
    """{section title: its tables} of ``report.report`` over a committed grid (the text of its report.md,
    which tests/test_committed_tables.py holds to it; the pretrained grid's with the side by side against the
    from-scratch one): a block states the report's own cells, its verdicts over the report's families."""
    compare = RS.path(SCRATCH) if grid == RECORDS else None
    text = RP.report(RS.path(grid), compare_dir=compare, write=False)
    out, title, lines = {}, "", []
    for line in [*text.split("\n"), "### "]:
        if line.startswith("### "):
            out[title] = tables(lines)
            title, lines = line[4:], []
        else:
            lines.append(line)
    return out


@cache
def groups(grid: str) -> dict[tuple, list[dict]]:
    """{(partition, arm): runs} of a committed grid, labelled as its report labels them (with their metric rows)."""
    runs, rounds, record = RP.load_grid(RS.path(grid))
    return RP.by_arm(runs, rounds, studies.setting_of(record).get("learning_rate", 1.0))


def label(text: str) -> str:
    """A report's label in prose: 'topic a=0.01' -> 'topic α = 0.01', 'FedProx mu=0.001' -> 'FedProx μ = 0.001'."""
    return text.replace("mu=", "μ = ").replace(" a=", " α = ")


def value(cell: str) -> float:
    """The leading number of a cell ('94.3 ± 2.2' -> 94.3)."""
    return float(cell.split()[0].replace("\u2212", "-"))


def interval(cell: str) -> tuple[float, float, float]:
    """(mean, low, high) of a comparison cell ('-1.0 [-1.1, -1.0] (n=3; ...)')."""
    m = re.match(r"\s*([+\-−]?[\d.]+) \[([+\-−]?[\d.]+), ([+\-−]?[\d.]+)\]", cell)
    check(m is not None, f"not a comparison cell: {cell!r}")
    return tuple(float(x.replace("\u2212", "-")) for x in m.groups())


def over(cells) -> str:
    """'12': the family size the verdict cells name (one size, or the sizes joined)."""
    return " / ".join(dict.fromkeys(m for c in cells for m in re.findall(r"over (\d+)", c)))


def holm_count(cells) -> str:
    """'1 of 16': how many of the comparison cells are significant after Holm, of how many."""
    cells = [c for c in cells if "[" in c]
    return f"{sum('p_Holm' in c for c in cells)} of {len(cells)}"


def span(values, digits: int = 1, sign: str = "") -> str:
    """'−1.2 to −1.0' over the values ('−1.0' when they print alike; ``sign`` '+': '+0.0 to +0.1')."""
    values = sorted(values)
    lo, hi = (f"{v:{sign}.{digits}f}" for v in (values[0], values[-1]))
    return minus(lo if lo == hi else f"{lo} to {hi}")


def budget(grid: str, arm: str = "FedAvg", parts: tuple[str, ...] = (IID, TOPIC)) -> tuple[str, bool]:
    """('+1.2 % (iid) and +0.9 % (topic α = 0.01), seed 0 only', whether every one is under the rule's gain): an
    arm's final perplexity at twice the rounds against the grid's, per partition over the seeds that ran it, from
    the report's budget check (partition, arm, seed, the two perplexities, the gain, the verdict)."""
    rows = [r for r in report(grid)["headline grid"][1].rows if r[1] == arm and r[0] in parts]
    seeds = sorted({r[2] for r in rows}, key=int)
    change = [f"{span([-value(r[5]) for r in rows if r[0] == part], sign='+')} % ({label(part)})"
              for part in dict.fromkeys(r[0] for r in rows)]
    return (" and ".join(change) + (f", seed {seeds[0]} only" if len(seeds) == 1 else
                                    f" over seeds {', '.join(seeds)}"), all(r[6] == "yes" for r in rows))


def last_gain(runs: list[dict]) -> float:
    """The mean over ``runs`` of the validation perplexity's relative fall a round between their last two
    evaluations (percent)."""
    gains = []
    for r in runs:
        ev = [(x["round"], x["val_ppl"]) for x in r["rows"] if "val_ppl" in x]
        (r0, p0), (r1, p1) = ev[-2:]
        gains.append(100 * (1 - p1 / p0) / (r1 - r0))
    return sum(gains) / len(gains)


def clusters_used(run: dict) -> int:
    """How many of a clustered run's clusters serve a client at its end."""
    return len(set(run["summary"]["clusters"]))


# ------------------------------------------------------------------------------------------ from scratch
def scratch_headline() -> str:
    """The from-scratch study's headline: FedAvg against its references and its budget check, topic skew against
    iid shards, and the methods against FedAvg, in the report's cells."""
    r = report(SCRATCH)
    grid, refs, split = r["headline grid"][0], r["Reference points"][0], r["Does the split hurt"][0]
    change, flat = budget(SCRATCH)
    ifca_p = [grid.cell("personalised ppl", TOPIC, a) for a in (IFCA, "FedAvg")]
    text = (f"FedAvg ends at {grid.cell('final ppl', IID, 'FedAvg')} on iid shards and "
            f"{grid.cell('final ppl', TOPIC, 'FedAvg')} on topic α = 0.01 (final validation perplexity, mean ± sample "
            f"sd over {grid.cell('n', IID, 'FedAvg')} seeds; the unigram "
            f"{refs.cell('unigram ppl (global validation)', IID)}, "
            f"the uniform guess {refs.cell('uniform ppl', IID)}) and still falls "
            f"{last_gain(groups(SCRATCH)[(IID, 'FedAvg')]):.1f} % a round at its last evaluations; at twice the rounds "
            f"its perplexity changes by {change}: {'at' if flat else 'far from'} a plateau. Topic skew minus iid, "
            f"FedAvg, paired by seed (the report's \"Does the split hurt\"): "
            f"{split.cell('Δ vs iid (same arm)', TOPIC, 'FedAvg')}. Against FedAvg on the same shards (the report's "
            f"headline grid, both perplexities one Holm family): SCAFFOLD {grid.cell('Δ vs FedAvg', IID, 'SCAFFOLD')} "
            f"(iid), {grid.cell('Δ vs FedAvg', TOPIC, 'SCAFFOLD')} (topic); IFCA (4) on the clients' own held-out "
            "texts "
            f"of topic shards {ifca_p[0]} against {ifca_p[1]}, {grid.cell('Δ vs FedAvg', TOPIC, IFCA, nth=1)}.")
    return minus(text)


def scratch_methods() -> str:
    """FedProx's μ sweep and IFCA against FedAvg in the from-scratch report's headline grid, with IFCA's clusters."""
    r = report(SCRATCH)
    grid, refs = r["headline grid"][0], r["Reference points"][0]
    mus = [a for a in grid.arms(TOPIC) if a.startswith("FedProx")]
    prox = "; ".join(f"{label(p)}: " + ", ".join(f"{label(a).removeprefix('FedProx ')} "
                                                 f"{grid.cell('Δ vs FedAvg', p, a)}" for a in mus if a in grid.arms(p))
                     for p in (IID, TOPIC))
    top = mus[-1]
    ifca = {p: groups(SCRATCH)[(p, IFCA)] for p in (IID, TOPIC)}
    used = {p: ", ".join(str(clusters_used(x)) for x in sorted(g, key=lambda x: x["args"]["seed"]))
            for p, g in ifca.items()}
    purity = ", ".join(f"{x['summary']['cluster_purity']:.1f}" for x in sorted(ifca[TOPIC],
                                                                                key=lambda x: x["args"]["seed"]))
    text = (f"FedProx against FedAvg on the same shards (final validation perplexity, the headline grid's Holm "
            f"family): {prox}. {label(top)} ends at {grid.cell('final ppl', IID, top)} (iid) and "
            f"{grid.cell('final ppl', TOPIC, top)} (topic) against the unigram's "
            f"{refs.cell('unigram ppl (global validation)', IID)}; failure modes flagged: "
            f"{grid.cell('failure modes (runs)', IID, top)} (iid), {grid.cell('failure modes (runs)', TOPIC, top)} "
            f"(topic). IFCA (4) against FedAvg, global validation: {grid.cell('Δ vs FedAvg', IID, IFCA)} (iid), "
            f"{grid.cell('Δ vs FedAvg', TOPIC, IFCA)} (topic); the clients' own held-out texts on iid shards: "
            f"{grid.cell('Δ vs FedAvg', IID, IFCA, nth=1)}; its compute {grid.cell('compute', IID, IFCA)} FedAvg's "
            f"(its starting models). Clusters serving a client at the end, per seed: {used[IID]} of 4 (iid), "
            f"{used[TOPIC]} (topic; purity against the clients' dominant topics {purity}).")
    return minus(text)



# ------------------------------------------------------------------------------------- the pretrained regime
def selection() -> str:
    """What the selection split chose (selection.json): FedAvg's peak rate with every rate's score, FedProx's μ per
    partition with iid's scores and how far the other partitions' are from them."""
    s = read_selection(RS.path(RECORDS) / SELECTION_FILE)
    lr = s["choices"]["learning_rate"]
    rates = "; ".join(f"{k} → " + (f"{v:.1f}" if not isinstance(v, str) else v) for k, v in lr["scores"].items())
    mu = {part: s["choices"][f"mu/{part}"]["scores"] for part in chosen_in(s, "mu/")}
    picked = {part: candidate_key(v) for part, v in chosen_in(s, "mu/").items()}
    chosen = set(picked.values())
    spread = max(abs(mu[p][m] - mu[IID][m]) for p in mu for m in mu[p]  # over the mus that scored on both
                 if not isinstance(mu[p][m], str) and not isinstance(mu[IID].get(m, ""), str))
    which = (f"μ = {chosen.pop()} on every partition" if len(chosen) == 1 else
             "μ " + ", ".join(f"{v} ({label(k)})" for k, v in picked.items()))
    seeds = ", ".join(map(str, s["runs"]["seeds"]))
    return minus(f"Chosen on the selection split (seed {seeds}, {s['runs']['rounds']} rounds; final validation "
                 f"perplexity, never the numbers below): peak rate {lr['chosen']:g} ({rates}), FedProx {which} (iid "
                 + " / ".join(v if isinstance(v, str) else f"{v:.2f}" for v in mu[IID].values()) + " for μ = "
                 + " / ".join(mu[IID])
                 + f"; every other partition within {spread:.1f} ppl of these at every μ).")


def pretrained_headline() -> str:
    """The pretrained regime's headline: the report's headline grid as arms by partition (final validation
    perplexity and the difference to FedAvg), the references, the budget check and topic skew against iid."""
    r = report(RECORDS)
    grid, refs, split = r["headline grid"][0], r["Reference points"][0], r["Does the split hurt"][0]
    parts = (IID, TOPIC)
    rows = [[label(a), *(grid.cell("final ppl", p, a) for p in parts),
             *(grid.cell("Δ vs FedAvg", p, a) for p in parts)] for a in grid.arms(IID)]
    table = stats.markdown(["arm", *map(label, parts), *(f"Δ vs FedAvg, {label(p)}" for p in parts)], rows)
    ref = [refs.cell(k, IID) for k in ("the model before training (random init, or a base's zero-shot)",
                                       "unigram ppl (global validation)", "uniform ppl")]
    below = max(value(grid.cell("final ppl", p, a)) for p in parts for a in grid.arms(p)) < min(map(value, ref))
    checked = dict.fromkeys(r[1] for r in report(RECORDS)["headline grid"][1].rows if r[0] in parts)  # with a twin
    budgets = {arm: budget(RECORDS, arm) for arm in checked}
    rows_ = [r for r in report(RECORDS)["headline grid"][1].rows if r[0] in parts]
    worse = [arm for arm in checked if all(value(r[5]) < -100 * studies.BUDGET_GAIN for r in rows_ if r[1] == arm)]
    flat = [arm for arm, (_, ok) in budgets.items() if ok and arm not in worse]
    unchecked = [a for a in grid.arms(IID) if a not in checked]
    verdict = ("every one at its plateau by that check" if len(flat) == len(budgets) else
               f"at the plateau by that check: {', '.join(map(label, flat)) or 'none'}")
    if worse:
        verdict += (f"; worse at twice the rounds on every seed and partition, past its best rather than short of a "
                    f"plateau: {', '.join(map(label, worse))}")
    text = (f"Final validation perplexity, mean ± sample sd over {grid.cell('n', IID, 'FedAvg')} seeds; Δ paired by "
            "seed with its 95 % t interval, the verdicts Holm-corrected over the report's headline grid (both "
            f"perplexities). Reference points (iid shards): the base before fine-tuning {ref[0]} (zero-shot), the "
            f"unigram {ref[1]}, the uniform guess {ref[2]}; every headline arm ends "
            f"{'below all three' if below else 'above one of them'}. "
            "Budget check: at twice the rounds (the rate decaying over all of them) the final perplexity changes by "
            + "; ".join(f"{label(arm)} {change}" for arm, (change, _) in budgets.items())
            + f": {verdict}" + (f"; no second budget for {' or '.join(map(label, unchecked))}" if unchecked else "")
            + ". Topic skew minus iid, FedAvg, paired "
            f"by seed (the report's \"Does the split hurt\"): {split.cell('Δ vs iid (same arm)', TOPIC, 'FedAvg')}.")
    return minus("\n".join(table) + "\n\n" + text)



def budget_coverage() -> str:
    """Which arms of the headline and main grids have their second budget (the report's budget table: the same arm
    at twice the rounds) on every seed, on some, or on none."""
    r = report(RECORDS)
    twins: dict[tuple, set] = {}
    for row in r["headline grid"][1].rows:
        twins.setdefault((row[0], row[1]), set()).add(row[2])
    cells = [(row[0], row[1]) for t in (r["headline grid"][0], r["main grid"][0]) for row in t.rows]
    n = int(r["headline grid"][0].cell("n", IID, "FedAvg"))

    def listed(keys: list[tuple]) -> str:
        by_part: dict[str, list[str]] = {}
        for part, arm in dict.fromkeys(keys):
            by_part.setdefault(part, []).append(label(arm))
        return "; ".join(f"{label(part)}: {', '.join(arms)}" for part, arms in by_part.items()) or "none"

    full = [k for k in cells if len(twins.get(k, ())) >= n]
    some = [k for k in cells if 0 < len(twins.get(k, ())) < n]
    none = [k for k in cells if not twins.get(k)]
    return minus(f"Arms with their twice-the-rounds twin on all {n} seeds ({listed(full)})"
                 + (f"; on some seeds only ({listed(some)})" if some else "")
                 + f"; without one ({listed(none)}).")


def pretrained_skew() -> str:
    """Topic skew against iid shards for FedProx and SCAFFOLD (FedAvg's is the headline's), and FedAvg's
    personalised perplexity on each partition."""
    r = report(RECORDS)
    grid, split = r["headline grid"][0], r["Does the split hurt"][0]
    arms = [a for a in grid.arms(TOPIC) if a != "FedAvg" and a != IFCA]
    return minus("Topic α = 0.01 minus iid, same arm, paired by seed (Holm over the report's \"Does the split "
                 "hurt\"): " + "; ".join(f"{label(a)} {split.cell('Δ vs iid (same arm)', TOPIC, a)}" for a in arms)
                 + f". FedAvg's clients' own held-out perplexity: {grid.cell('personalised ppl', TOPIC, 'FedAvg')} on "
                 f"topic shards, {grid.cell('personalised ppl', IID, 'FedAvg')} on iid shards (not a paired "
                 "comparison: the held-out texts differ by partition).")


def moved(run: dict) -> bool:
    """Whether a clustered run's assignment changes after its first round."""
    seen = [tuple(x["clusters"]) for x in run["rows"] if "clusters" in x]
    return len(set(seen)) > 1


def by_seed_runs(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda x: x["args"]["seed"])


def ifca() -> str:
    """IFCA (4) in both regimes, per seed: the clusters its clients use, its change from FedAvg in percent; at the
    pretrained plateau also whether clients move and where its best round comes."""
    g, h = groups(SCRATCH), groups(RECORDS)
    grid = report(RECORDS)["headline grid"][0]

    def pct(arm: list[dict], ref: list[dict], key: str) -> str:
        a, b = RS.by_seed(arm, key), RS.by_seed(ref, key)
        return ", ".join(f"{100 * (a[s] / b[s] - 1):+.1f}" for s in sorted(a) if s in b)

    def used(runs: list[dict]) -> str:
        return ", ".join(str(clusters_used(x)) for x in by_seed_runs(runs))

    ifca_p = [h[(p, IFCA)] for p in (IID, TOPIC)]
    best = [x["summary"]["best_round"] for runs in ifca_p for x in runs]
    text = (f"From scratch ({g[(IID, IFCA)][0]['args']['num_rounds']} rounds), per seed: IFCA's clients use "
            f"{used(g[(IID, IFCA)])} "
            f"of its 4 clusters on iid shards and {used(g[(TOPIC, IFCA)])} on topic shards; there its global "
            f"validation perplexity is {pct(g[(TOPIC, IFCA)], g[(TOPIC, 'FedAvg')], 'final_val_ppl')} % from FedAvg's "
            f"and its clients' own held-out perplexity "
            f"{pct(g[(TOPIC, IFCA)], g[(TOPIC, 'FedAvg')], 'final_personal_val_ppl')} %. In the pretrained regime: "
            f"{used(ifca_p[0])} clusters (iid) and {used(ifca_p[1])} (topic); runs in which a client changes cluster "
            f"after the first round: {sum(map(moved, ifca_p[0] + ifca_p[1]))} of {len(best)}; its best validation "
            f"perplexity ({grid.cell('best ppl (any round)', IID, IFCA)} iid, "
            f"{grid.cell('best ppl (any round)', TOPIC, IFCA)} topic) comes at round {span(best, 0)} of "
            f"{ifca_p[0][0]['summary']['rounds_done']}, its final one is {grid.cell('final ppl', IID, IFCA)} and "
            f"{grid.cell('final ppl', TOPIC, IFCA)}; on topic shards the clients' own held-out perplexity is "
            f"{grid.cell('personalised ppl', TOPIC, IFCA)} against FedAvg's "
            f"{grid.cell('personalised ppl', TOPIC, 'FedAvg')}, "
            f"{grid.cell('Δ vs FedAvg', TOPIC, IFCA, nth=1)} (the headline grid's family), "
            f"{pct(ifca_p[1], h[(TOPIC, 'FedAvg')], 'final_personal_val_ppl')} % per seed. At twice the rounds its "
            f"final global perplexity rises {budget(RECORDS, IFCA)[0]}: IFCA here degrades after its first rounds "
            "rather than settling, so its final numbers are past its best, not a plateau.")
    return minus(text)


@cache
def failure_findings() -> dict[str, str]:
    """The failure grid's sentences, each a block ``failure-<key>``: the report's failure grid (Holm over its
    comparisons) and its equal-compute table (Holm over its own)."""
    r, h = report(RECORDS), groups(RECORDS)
    grid, equal = r["failure grid"]
    d = lambda p, a, nth=0: grid.cell("Δ vs FedAvg", p, a, nth=nth)  # noqa: E731
    mus = [a for a in grid.arms(TOPIC) if a.startswith("FedProx")]
    fedavg = value(grid.cell("final ppl", TOPIC, "FedAvg"))
    top = mus[-1]
    few = [a for a in grid.arms(IID) if a.endswith("/round")]
    two, one = [a for a in few if "2 of" in a][0], [a for a in few if "1 client" in a][0]
    long = [a for a in grid.arms(IID) if a.startswith("FedAvg, 2 of") and a.endswith("rounds")][0]
    local = "local only (10 clusters)"
    data = "FedAvg + data clusters"
    ref62 = [a for a in grid.arms(IID) if a.startswith("FedAvg, ") and a.endswith("rounds") and "clients" not in a][0]
    out = {}
    out["fedprox"] = ("On topic α = 0.01 against FedAvg (the report's failure grid, Holm over its comparisons): "
                      + ", ".join(f"{label(a).removeprefix('FedProx ')} {d(TOPIC, a)}" for a in mus)
                      + f"; {label(top)} costs {100 * value(d(TOPIC, top)) / fedavg:.0f} % of FedAvg's perplexity, "
                      f"{grid.cell('at plateau', TOPIC, top)} of its runs at their plateau.")
    out["participation"] = (
        f"{label(two)} for {studies.PRETRAINED_ROUNDS} rounds (compute {grid.cell('compute', IID, two)}): "
        f"{d(IID, two)} (iid), {d(TOPIC, two)} (topic), at their plateau {grid.cell('at plateau', IID, two)} and "
        f"{grid.cell('at plateau', TOPIC, two)}. At equal client steps ({long.rsplit(', ', 1)[1]}; the report's "
        f"equal-compute table, Holm over its own comparisons): {equal.cell('Δ final ppl', IID, long)} (iid), "
        f"{equal.cell('Δ final ppl', TOPIC, long)} (topic). {label(one)} (compute {grid.cell('compute', IID, one)}): "
        f"{d(IID, one)} (iid), {d(TOPIC, one)} (topic).")
    runs = by_seed_runs(h[(TOPIC, local)])
    out["local"] = (
        f"Local training alone: the global validation perplexity is best at round "
        f"{span([x['summary']['best_round'] for x in runs], 0)} ({grid.cell('best ppl (any round)', TOPIC, local)}); "
        f"the divergence rule stops every seed at round {span([x['summary']['rounds_done'] for x in runs], 0)} "
        f"({grid.cell('status', TOPIC, local)}) at {grid.cell('final ppl', TOPIC, local)}; the clients' own held-out "
        f"texts {grid.cell('personalised ppl', TOPIC, local)}, FedAvg's "
        f"{grid.cell('personalised ppl', TOPIC, 'FedAvg')}.")
    runs = h[(TOPIC, data)]
    sil = [max(x["summary"]["clustering"]["silhouette_by_num_clusters"].items(), key=lambda kv: kv[1]) for x in runs]
    k, best = max(sil, key=lambda kv: kv[1])
    out["clusters"] = (
        f"Data-aware clustering keeps {span([x['summary']['num_clusters'] for x in runs], 0)} cluster in every seed "
        f"(best silhouette {best:.3f} at k = {k}, under the rule's {clustering.MIN_SILHOUETTE:g}; mean Hellinger "
        f"distance {span([x['summary']['clustering']['mean_distance'] for x in runs], 2)}) and is FedAvg: "
        f"{d(TOPIC, data)}. IFCA (4) against FedAvg: {d(IID, IFCA)} (iid), {d(TOPIC, IFCA)} (topic); against "
        f"{label(ref62)} at equal compute (training tokens {equal.cell('compute ratio', IID, IFCA)} of it, "
        f"{grid.cell('compute', IID, IFCA)} of FedAvg's): {equal.cell('Δ final ppl', IID, IFCA)} (iid), "
        f"{equal.cell('Δ final ppl', TOPIC, IFCA)} (topic).")
    out["scaffold"] = f"SCAFFOLD against FedAvg: {d(IID, 'SCAFFOLD')} (iid), {d(TOPIC, 'SCAFFOLD')} (topic)."
    flagged = [f"{label(row[1])} ({label(row[0])}): {grid.cell('failure modes (runs)', row[0], row[1])}"
               for row in grid.rows if grid.cell("failure modes (runs)", row[0], row[1]) != "none"]
    out["detectors"] = "Failure modes flagged (runs of each arm): " + "; ".join(flagged) + "."
    return {k: minus(v) for k, v in out.items()}


def pretrained_main() -> str:
    """The main grid in the pretrained regime: per split FedAvg, FedProx and SCAFFOLD against FedAvg and FedAvg
    against iid shards (the report's main grid and "Does the split hurt"), then what they add up to."""
    r = report(RECORDS)
    grid, split = r["main grid"][0], r["Does the split hurt"][0]
    parts = list(dict.fromkeys(row[0] for row in grid.rows))
    prox = [a for a in grid.arms(IID) if a.startswith("FedProx")][0]
    rows = [[label(p), grid.cell("final ppl", p, "FedAvg"), grid.cell("Δ vs FedAvg", p, prox),
             grid.cell("Δ vs FedAvg", p, "SCAFFOLD"),
             split.cell("Δ vs iid (same arm)", p, "FedAvg") if p != IID else "–"] for p in parts]
    table = stats.markdown(["partition", "FedAvg", f"{label(prox)} − FedAvg", "SCAFFOLD − FedAvg",
                            "FedAvg − FedAvg on iid"], rows)
    skewed = [row for row in split.rows if row[0] in parts]
    sca = [grid.cell("Δ vs FedAvg", p, "SCAFFOLD") for p in parts]
    per = {a: [grid.cell("Δ vs FedAvg", p, a, nth=1) for p in parts] for a in (prox, "SCAFFOLD")}
    counts = [grid.cell("at plateau", *row[:2]).split("/") for row in grid.rows if row[0] != IID]
    flat = [sum(int(c[i]) for c in counts) for i in (0, 1)]
    text = (f"Every arm on a skewed split of this grid against the same arm on iid shards (the report's \"Does the "
            f"split hurt\", Holm over its {over(row[4] for row in split.rows)}): "
            f"{holm_count(row[4] for row in skewed)} differ; FedAvg is within "
            f"{max(abs(value(split.cell('Δ vs iid (same arm)', p, 'FedAvg'))) for p in parts if p != IID):.1f} ppl "
            f"of its iid value on every split. SCAFFOLD against FedAvg: {span(map(value, sca))} ppl, "
            f"{holm_count(sca)} significant after Holm over the main grid's {over(sca)} ("
            + ", ".join(label(p) for p, c in zip(parts, sca) if "p_Holm" in c)
            + f"); every interval within [{min(interval(c)[1] for c in sca):+.1f}, "
            f"{max(interval(c)[2] for c in sca):+.1f}]. The clients' own held-out perplexity against "
            f"FedAvg's: {label(prox)} {span(map(value, per[prox]), sign='+')}, SCAFFOLD "
            f"{span(map(value, per['SCAFFOLD']), sign='+')} "
            f"on every split. At plateau: {flat[0]}/{flat[1]} runs beyond the iid ones.")
    return minus("\n".join(table) + "\n\n" + text)



def gaps(run: dict) -> list[float]:
    """The drift detector's statistic at each evaluation: validation loss minus the clients' mean local loss."""
    return [x["val_loss"] - x["train_loss"] for x in run["rows"] if "val_loss" in x and "train_loss" in x]


def calibration() -> str:
    """The calibrate grid's runs as the detectors see them (the runs that chose the thresholds): what each class
    built to fail does, beside the healthy headline runs (FedAvg, FedProx, SCAFFOLD on iid and topic shards)."""
    r, h = report(RECORDS), groups(RECORDS)
    cal, drift_t = r["calibrate grid"]
    fail, split = r["failure grid"][0], r["Does the split hurt"][0]
    th = failure.DEFAULT
    refs = r["Reference points"][0]
    zero = refs.cell(refs.headers[-1], IID)
    diverging = [k for k in h if k[1].endswith("no clipping")][0]
    osc = [k for k in h if k[0] == TOPIC and k[1].startswith("FedAvg, 1 client/round, ")][0]
    one = (TOPIC, "FedAvg, 1 client/round")
    drift = sorted(k for k in h if k[1].startswith(f"FedAvg, {8 * studies.LOCAL_STEPS} local steps"))
    healthy = [x for k, g in h.items() if k[0] in (IID, TOPIC) and k[1] in ("FedAvg", "FedProx mu=0.001", "SCAFFOLD")
               for x in g]
    first = [next(x["val_ppl"] for x in run["rows"] if "val_ppl" in x) for run in h[diverging]]
    flagged = [RP.detected(run).get("oscillation") for run in h[osc]]
    dg = [gaps(run) for k in drift for run in h[k]]
    top = [max(gaps(run)) for run in healthy]

    def improve(runs: list[dict]) -> list[float]:  # slow convergence's statistic: the first evaluations' gain, %
        out = []
        for run in runs:
            loss = [x["val_loss"] for x in run["rows"] if "val_loss" in x][:th.slow_rounds]
            out.append(100 * (loss[0] - min(loss)) / abs(loss[0]))
        return out

    text = [
        f"Divergence: the diverging arm ({label(diverging[1])}) is at perplexity {span(first, 0)} at its first "
        f"evaluation, against the base's zero-shot {zero}; "
        f"it ends {cal.cell('final ppl', *diverging)} ({cal.cell('status', *diverging)}).",
        f"Oscillation: {label(one[1])} on topic shards ends at {cal.cell('final ppl', *one)} with "
        f"{fail.cell('compute', *one)} FedAvg's compute, failure modes {cal.cell('failure modes (runs)', *one)}; "
        f"built to oscillate ({label(osc[1])}) the rule first flags its runs at round "
        f"{span([f for f in flagged if f is not None], 0)} ({sum(f is not None for f in flagged)} of {len(flagged)}).",
        "Client drift: built to drift, " + "; ".join(
            f"{label(p)} {cal.cell('final ppl', p, a)} ({drift_t.cell('compute ratio', p, a)} FedAvg's training "
            f"tokens), against FedAvg on the same shards and seeds {drift_t.cell('Δ final ppl', p, a)}"
            for p, a in drift)
        + f"; topic minus iid {split.cell('Δ vs iid (same arm)', TOPIC, drift[0][1])}. The detector's gap (validation "
        f"loss minus the clients' loss over their local steps): {span([g[0] for g in dg], 2)} nats at the first "
        f"evaluation of these runs and {span([g[min(4, len(g) - 1)] for g in dg], 2)} by the fifth; the "
        f"{len(healthy)} healthy headline runs' highest {span(top, 2)} ({th.drift_gap - max(top):.2f} nats under the "
        f"threshold of {th.drift_gap:g}).",
        f"Slow convergence: the loss's gain over the first {th.slow_rounds} evaluations is "
        f"{span(improve(healthy), 1)} % "
        f"on the healthy headline runs and {span(improve(h[(IID, IFCA)] + h[(TOPIC, IFCA)]), 1)} % on IFCA's "
        f"(the rule asks {100 * th.slow_min_improvement:g} %).",
    ]
    return minus("\n\n".join(f"- {t}" for t in text))


def side_by_side() -> str:
    """The report's side by side as one column per regime: FedAvg's perplexity, topic skew against iid, each method
    against FedAvg (in % of the reference's perplexity, Holm over the side by side), the budget check."""
    t = report(RECORDS)["Side by side: the headline arms in both regimes"][0]
    regimes = list(dict.fromkeys(row[0] for row in t.rows))
    arms = [row[2] for row in t.rows if row[0] == regimes[0] and row[1] == IID and row[2] != "FedAvg"]

    def pair(regime: str, header: str, arm: str) -> str:
        return " / ".join(t.cell(header, regime, p, arm) for p in (IID, TOPIC))

    rows = [[f"FedAvg, iid / {label(TOPIC)} (ppl)", *(pair(g, "final ppl", "FedAvg") for g in regimes)],
            ["topic skew vs iid, FedAvg (%)", *(t.cell("Δ vs the same arm on iid (% of its ppl)", g, TOPIC, "FedAvg")
                                                for g in regimes)],
            *([f"{label(a)} vs FedAvg, iid / topic (%)", *(pair(g, "Δ vs FedAvg (% of FedAvg's ppl)", a)
                                                            for g in regimes)] for a in arms),
            ["budget check: FedAvg at twice the rounds", *(budget(REGIMES[g])[0] for g in regimes)],
            ["at plateau, FedAvg iid / topic (runs)", *(pair(g, "at plateau", "FedAvg") for g in regimes)]]
    return minus("\n".join(stats.markdown(["", *regimes], rows)))


BLOCKS = {"base": base, "detectors": detectors, "scaffold": scaffold, "study": study, "privacy": privacy_table,
          "privacy-findings": privacy_findings,
          "privacy-validation": privacy_validation, "mcmahan": mcmahan_table,
          "mcmahan-findings": mcmahan_findings,
          "mcmahan-validation": mcmahan_validation, "mcmahan-choice": mcmahan_choice,
          "scratch-headline": scratch_headline,
          "scratch-methods": scratch_methods, "selection": selection,
          "pretrained-headline": pretrained_headline, "pretrained-skew": pretrained_skew, "ifca": ifca,
          "budget-coverage": budget_coverage,
          "pretrained-main": pretrained_main, "calibration": calibration, "side-by-side": side_by_side,
          **{f"failure-{k}": (lambda k=k: failure_findings()[k])
             for k in ("fedprox", "participation", "local", "clusters", "scaffold", "detectors")}}
