"""The README blocks of llm_noniid's results, generated from the committed records of run_experiments.py
(``python -m common.results --write`` rewrites them; ``--check`` fails when one differs).

Records: ``RECORDS/runs/<algorithm>_<partition>_k10_p1_lr0.01_j8_schedcosine_s<seed>/`` (args.json,
summary.json), the pretrained-LoRA regime's grid. A sentence about one method on every split is one Holm family
over those splits (``SPLITS``), declared here. ``PRIVACY/<population>_eps<epsilon>_s<seed>/`` (args.json,
summary.json, metrics.jsonl): privacy_study.py's runs, one table whose comparisons to epsilon = inf are one Holm
family.
"""
from __future__ import annotations

import json
import math
import re
from functools import cache

from common import plateau, stats, study, study_report
from common import results as RS

RECORDS = "llm_noniid/results/pretrained/grid"
PRIVACY = "llm_noniid/results/privacy"
PRIVACY_VALIDATION = "llm_noniid/results/privacy_validation"  # the runs that chose the study's settings
POPULATIONS = {"roles": "1,166 roles", "synthetic10k": "10,000 synthetic", "few12": "12 roles (sample)",
               "roles-lr1": "1,166 roles, server rate 1"}
OWN_RATE = {"roles": "roles-lr1"}  # a population's noiseless run at the server rate validated without noise
PLATEAU_TOL = 0.5  # accuracy points: a run whose last third of evaluations gains more than this is still improving
SPLITS = {"iid": "iid", "topic_a0.01": "topic α = 0.01", "topic_a0.1": "topic α = 0.1",
          "style_length": "style", "token_frequency": "token skew"}
SETTING = "k10_p1_lr0.01_j8_schedcosine"   # 10 clients, all in every round, the selected rate, 8 local steps


@cache
def arm(algorithm: str, split: str) -> dict:
    """{seed: final validation perplexity} of an arm's reported runs (not the longer _R300 continuations)."""
    return RS.by_seed(runs(algorithm, split), "final_val_ppl")


@cache
def runs(algorithm: str, split: str, budget: str = "") -> list[dict]:
    """An arm's reported runs, or at ``budget`` its continuations of the same seeds (``_R120``: twice the rounds)."""
    return RS.records(f"{RECORDS}/runs", f"{algorithm}_{split}_{SETTING}_s[0-9]" + (f"_{budget}" if budget else ""))


# run_experiments.py's partition flags of each split
PARTITIONS = {"iid": ("--partition", "iid"), "topic_a0.01": ("--partition", "topic_skew", "--alpha", "0.01"),
              "topic_a0.1": ("--partition", "topic_skew", "--alpha", "0.1"),
              "style_length": ("--partition", "style_skew", "--style-criterion", "length"),
              "token_frequency": ("--partition", "token_skew", "--token-skew", "frequency")}
# the rate decays to 0 by a cosine, so a last-fraction rule holds by construction: a run is judged only against its
# 120-round continuation (run for FedAvg seed 0 on iid and topic α = 0.01 shards alone), within half the seeds'
# sd of the final perplexity
PLATEAU = study.Plateau("twice the rounds lower the final validation perplexity by at most 0.5 sd of the seeds",
                        "R120", tolerance=0.5, metric="val_ppl", value="final_val_ppl", direction="min",
                        schedule="decayed")
# the pretrained regime: SCAFFOLD against FedAvg, one family over the splits, since the sentence concludes across
# them; FedAvg on topic skew against iid shards, a family of its own
PRETRAINED = study.Study(
    "pretrained", arms=tuple(study.Arm(f"{a}_{s}", "llm_noniid.train", ("--algorithm", a, *PARTITIONS[s]))
                             for s in SPLITS for a in ("fedavg", "scaffold")), seeds=(0, 1, 2),
    budgets={"": (), "R120": ("--rounds", "120")}, plateau=PLATEAU, compute="equal steps",
    comparisons=(*(study.Comparison(f"scaffold_{s}", f"fedavg_{s}", "SCAFFOLD − FedAvg over the splits")
                   for s in SPLITS), study.Comparison("fedavg_topic_a0.01", "fedavg_iid", "topic skew")))


def _runs(name: str, budget: str = "") -> list[dict]:
    return runs(*name.split("_", 1), budget)


def plateau_note(name: str, _: str = "") -> list[str]:
    """Arm ``name``'s plateau by ``PLATEAU`` (its runs against their R120 continuations where they exist)."""
    found = {r["args"]["seed"]: r["path"] for r in _runs(name)}
    longer = {r["args"]["seed"]: r["path"] for r in _runs(name, "R120")}
    return [n for n in [plateau.arm_note(PLATEAU, found, longer)] if n]


def steps(name: str, _: str = "") -> dict:
    """{seed: local steps a client took over the run} (rounds times local steps a round): what the arms share."""
    return {r["args"]["seed"]: r["summary"]["rounds_done"] * r["summary"]["local_steps_per_round"]
            for r in _runs(name)}


@cache
def findings() -> dict:
    """{comparison: Finding} of ``PRETRAINED`` through ``common.study_report`` (each with its warnings)."""
    return study_report.compare(PRETRAINED, lambda name, _: arm(*name.split("_", 1)), plateau_note, unit=" ppl",
                                spent=steps)


def scaffold() -> str:
    """SCAFFOLD − FedAvg on every split, one Holm family over the splits (``PRETRAINED``'s): a warning beside a
    comparison (fewer than 3 seeds, compute, plateau), those every split shares said once."""
    found = {c: f for c, f in findings().items() if c.family != "topic skew"}
    common, each = study_report.shared(found.values())
    parts = [f"{SPLITS[c.arm.split('_', 1)[1]]} {study_report.said(f, w)}" for (c, f), w in
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
    rows = (run["path"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [100 * json.loads(r)["test_accuracy"] for r in rows if r.strip()]


def still_improving(acc: list[float]) -> bool:
    """The plateau rule, which a run can fail: its best point is its last, or its last third of evaluations gains
    more than ``PLATEAU_TOL`` points over its best before (``stats.plateau_gain``)."""
    return acc.index(max(acc)) == len(acc) - 1 or not stats.plateau_gain(acc) <= PLATEAU_TOL


def privacy_runs(folder: str = PRIVACY) -> dict:
    """{(population, epsilon): [runs]} of the study's records, each run with its accuracy curve ("curve")."""
    out: dict = {}
    for path in sorted((RS.ROOT / folder).glob("*_eps*_s*")):
        r = RS.record(path)  # summary None: the run diverged inside a client's update (its rows up to there kept)
        pop, eps, _ = r["name"].rsplit("_", 2)
        r["curve"] = curve(r)
        out.setdefault((pop, math.inf if eps == "epsinf" else float(eps[3:])), []).append(r)
    return {k: out[k] for k in sorted(out, key=lambda k: (list(POPULATIONS).index(k[0]), k[1]))}


def final(run: dict) -> float:
    """A run's final test accuracy (a fraction); nan for a diverged run."""
    return math.nan if run["summary"] is None else run["summary"]["final_test_accuracy"]


def eps_cell(runs: list[dict]) -> str:
    """'3.00 (δ 4.2e-04)': the epsilon the accountant reached at the run's end (its largest over seeds) at delta."""
    s = runs[0]["summary"]
    eps = max(r["summary"]["dp_epsilon"] for r in runs)
    return ("∞" if math.isinf(eps) else f"{eps:.2f}") + f" (δ {s['dp_delta']:.1e})"


def privacy_table(folder: str = PRIVACY) -> str:
    """The privacy-utility table: per population and epsilon the noise multiplier, expected cohort, rounds, final
    test accuracy over seeds, its paired difference to epsilon = inf (Holm over the table), best - last and the
    plateau rule; the references below."""
    runs = privacy_runs(folder)
    acc = {k: {r["args"]["seed"]: 100 * final(r) for r in g} for k, g in runs.items()}
    pairs = {}  # one Holm family: each epsilon against its population's noiseless twin (and own-rate run)
    for pop, eps in acc:
        refs = [(pop, math.inf), (OWN_RATE.get(pop), math.inf)]
        pairs |= {(pop, eps, ref[0]): (acc[(pop, eps)], acc[ref]) for ref in refs
                  if ref in acc and ref != (pop, eps) and not (math.isinf(eps) and ref[0] == pop)}
    fam = stats.compare(pairs)

    def diff(pop: str, eps: float, ref: str | None) -> str:
        return fam[(pop, eps, ref)][1] if (pop, eps, ref) in fam else "reference" if ref == pop else "–"

    rows = []
    for (pop, eps), all_runs in runs.items():
        g = [r for r in all_runs if r["summary"] is not None]  # the diverged ones count in the accuracy cell
        if not g:
            rows.append([POPULATIONS.get(pop, pop), f"{eps:g}", *["–"] * 3, stats.fmt_seeds(acc[(pop, eps)].values()),
                         "–", "–", "–", f"0/{len(all_runs)} ({len(all_runs)} diverged)"])
            continue
        s = g[0]["summary"]
        gap = stats.summarize(max(r["curve"]) - r["curve"][-1] for r in g)
        flat = sum(r["summary"]["final_test_accuracy"] <= r["summary"]["majority_accuracy"] for r in g)
        improving = sum(still_improving(r["curve"]) for r in g
                        if r["summary"]["final_test_accuracy"] > r["summary"]["majority_accuracy"])
        rows.append([POPULATIONS.get(pop, pop), eps_cell(g), f"{s['dp_noise']:.3g}",
                     f"{s['dp_expected_cohort']:.0f} (q {s['dp_rate']:.2g})", s["rounds_done"],
                     stats.fmt_seeds(acc[(pop, eps)].values()), diff(pop, eps, pop),
                     diff(pop, eps, OWN_RATE.get(pop)), f"{gap.mean:.1f}",
                     f"{len(g) - improving - flat}/{len(all_runs)}"
                     + (f" ({improving} still improving)" if improving else "")
                     + (f" ({flat} not above the majority character)" if flat else "")
                     + (f" ({len(all_runs) - len(g)} diverged)" if len(g) < len(all_runs) else "")])
    refs: dict = {}  # each seed scores its own test subset: the references' mean over a population's runs
    for (pop, _), g in runs.items():
        if pop not in OWN_RATE.values():
            refs.setdefault(pop, []).extend(r["summary"] for r in g if r["summary"] is not None)
    refs = {p: {k: sum(s[k] for s in ss) / len(ss) for k in ("majority_accuracy", "uniform_accuracy")}
            for p, ss in refs.items()}
    lines = stats.markdown(["clients", "ε (δ)", "noise z", "expected cohort", "rounds", "test accuracy %",
                            "− ε = ∞, points [95% CI]", "− ε = ∞ at server rate 1", "best − last", "at plateau"],
                           rows)
    ref = "; ".join(f"{POPULATIONS.get(p, p)}: majority character {100 * s['majority_accuracy']:.1f} %, "
                    f"uniform {100 * s['uniform_accuracy']:.1f} %" for p, s in refs.items())
    return minus("\n".join(lines) + f"\n\nReferences on each test set: {ref}. Differences paired by seed, Holm over "
                 f"the table's {sum(d.n >= 2 for d, _ in fam.values())} comparisons; at plateau: the last third of "
                 f"evaluations gains at most {PLATEAU_TOL} points over the best before, the best is not the last, and "
                 "the run ends above the majority character (a flat run at the reference has not started to learn).")


def minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def noise_ratio(s: dict) -> float:
    """The noise's L2 norm on the mean, z C sqrt(d) / (q N), in units of C (the largest a mean of clipped updates
    can be): above 1 a round's noise outweighs any update."""
    return s["dp_noise"] * math.sqrt(s["trainable_params"]) / s["dp_expected_cohort"]


def privacy_findings(folder: str = PRIVACY) -> str:
    """The study's sentences: per population the noise against the signal, the seeds above the majority
    character, and the few-client case's delta."""
    runs = {k: [r for r in g if r["summary"] is not None] for k, g in privacy_runs(folder).items()}
    runs = {k: g for k, g in runs.items() if g}
    parts = []
    for pop in POPULATIONS:
        private = [(eps, g) for (p, eps), g in runs.items() if p == pop and not math.isinf(eps)]
        if not private:
            continue
        s0 = private[0][1][0]["summary"]
        n = s0["clients"]
        ratios = ", ".join(f"{noise_ratio(g[0]['summary']):.1f} at ε = {eps:g}" for eps, g in private)
        above = ", ".join(f"{sum(r['summary']['final_test_accuracy'] > r['summary']['majority_accuracy'] for r in g)}"
                          f"/{len(g)} at ε = {'∞' if math.isinf(eps) else f'{eps:g}'}"
                          for (p, eps), g in runs.items() if p == pop)
        parts.append(f"{POPULATIONS[pop]} (N = {n:,}, δ = 1/N^1.1 = {s0['dp_delta']:.1e}): the noise's norm on the "
                     f"mean is {ratios} times C (d = {s0['trainable_params']:,} parameters, expected cohort "
                     f"{s0['dp_expected_cohort']:.0f}); seeds ending above the majority character: {above}.")
    return minus(" ".join(parts))


def privacy_validation(folder: str = PRIVACY_VALIDATION) -> str:
    """The runs on the validation split (``shakespeare.py --eval-split validation``, seed 0, the 1,166 roles) that
    chose the study's clip, server step, cohort and local steps: their settings, validation accuracy every 10
    rounds, and the median pre-clip update norm at the last evaluation. Runs stopped by hand (no summary) count:
    what they showed by then decided."""
    rows = []
    for path in sorted((RS.ROOT / folder).iterdir()):
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


BLOCKS = {"scaffold": scaffold, "study": study, "privacy": privacy_table, "privacy-findings": privacy_findings,
          "privacy-validation": privacy_validation}
