"""A study as data: its arms, seeds, selection grids, budgets, plateau rule and comparisons, declared once, and the
one implementation of choosing a setting from finished selection runs that every grid script uses.

    lr = Grid("--lr", (3e-3, 1e-2, 3e-2), metric="best_val_ppl", direction="min", split="validation", extend=2)
    study = Study("real", arms=(Arm("fedavg", "mamba_fl.fed_avg", select="lr"),), seeds=(0, 1, 2),
                  grids={"lr": lr}, selection_seeds=(100,))
    pick = lr.pick({v: [jobs.summary_of(j) for j in runs_at[v]] for v in lr.values})  # one summary per seed
    pick.value, pick.scores, pick.edge, pick.beyond      # 0.01; {value: mean score}; "low"/"high"/None; next value
    plan = selection_jobs(study, "lr", out / "select") + reported_jobs(study, out / "runs", {"lr": pick.value})

The rule (``choose``): a candidate's score is the mean of its selection runs' scores over the selection seeds; a
run that is missing scores nothing and leaves its candidate out (named in ``Pick.missing``), one that diverged,
stopped early, or failed the study's own test (``valid``) leaves it out too; among the rest the best by
``direction`` wins, a tie going to the smaller value (to the earlier one of values that are not numbers). A pick that
is the smallest or largest of at least two numeric candidates tried is at the ``edge`` of its grid: it has not been
shown to be the best, and ``beyond`` is the next value past it, at the ratio to its neighbour once more (3e-3, 1e-2
are followed by 9e-4 below), rounded to ``digits`` significant digits. A study whose ``extend`` is above 0 runs
that value and chooses again, at most ``extend`` times (``extended``); the others say the pick is at the edge.

What a selection chose is written once, in one layout for every study (``write_selection`` / ``read_selection``,
``selection.json``): the study, the rule in words, what the selection runs shared (``runs``: seeds, rounds, ...), and
per setting (``choice_record``) the flag, split, metric and direction, every candidate's score (a number, or a word
saying why it is none: "diverged", "missing"), the value chosen, its edge and the values added past an edge.

    write_selection(out / "selection.json", "real", "the lowest best validation perplexity ...",
                    {"fedavg": choice_record(lr, pick)}, seeds=[100], rounds=3)
    read_selection(out / "selection.json")["choices"]["fedavg"]["chosen"]          # 0.01

A study's ``plateau`` is ``common.plateau.Plateau``: a rule checked from each run's records, which can fail.
The names a study declares are checked together (``Study.check``); the jobs it plans go to ``common.jobs``, which
skips finished runs and resumes interrupted ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from common import jobs
from common.checkpoint import atomic_write_text
from common.errors import UsageError, check, read_json
from common.plateau import Plateau  # the plateau rule: declared with the study, checked from its records

DIRECTIONS = ("min", "max")
COMPUTE = ("equal steps", "equal samples", "equal sequential updates")  # what a study's compared arms share


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def score_of(summary: Mapping | None, metric: str, valid: Callable[[Mapping], bool] | None = None) -> float | None:
    """One selection run's score: ``metric`` of its summary.json (a dotted path: ``final.selection_accuracy``);
    None when the run is missing (no summary), nan when it did not end as a result (a status other than complete,
    no finite number at ``metric``, or ``valid`` refusing it)."""
    if summary is None:
        return None
    value = summary
    for key in metric.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    ok = summary.get("status", "complete") == "complete" and _number(value) and math.isfinite(value)
    return float(value) if ok and (valid is None or valid(summary)) else math.nan


@dataclasses.dataclass(frozen=True)
class Pick:
    """What ``choose`` found: ``value`` (None when no candidate scored), ``scores`` {candidate: mean score, None
    when missing or not a result}, ``missing`` (candidates with a run not finished), ``edge`` ("low", "high" or
    None) and ``beyond`` (the candidate past the edge, None inside the grid)."""

    value: object
    scores: dict
    missing: tuple = ()
    edge: str | None = None
    beyond: float | None = None

    @property
    def at_edge(self) -> bool:
        return self.edge is not None


def beyond_edge(values: Sequence, best, digits: int = 3) -> tuple[str | None, float | None]:
    """(edge, next value): ("low", the value below) when ``best`` is the smallest of at least two numeric
    ``values``, ("high", the value above) when the largest, (None, None) otherwise: the ratio of the edge to its
    neighbour once more, to ``digits`` significant digits."""
    numeric = sorted(v for v in values if _number(v))
    if not _number(best) or len(numeric) < 2 or best not in (numeric[0], numeric[-1]):
        return None, None
    if best == numeric[0]:
        return "low", float(f"{numeric[0] * numeric[0] / numeric[1]:.{digits}g}")
    return "high", float(f"{numeric[-1] * numeric[-1] / numeric[-2]:.{digits}g}")


def choose(per_seed: Mapping[object, Sequence[float | None]], direction: str, digits: int = 3) -> Pick:
    """The one selection rule (module doc) over ``per_seed`` {candidate: [its runs' scores, one per selection
    seed]}, as ``score_of`` gives them: None missing, nan not a result."""
    check(direction in DIRECTIONS, f"a selection's direction is one of {', '.join(DIRECTIONS)}, got {direction!r}")
    scores, missing = {}, []
    for value, runs in per_seed.items():
        runs = list(runs)
        if not runs or any(s is None for s in runs):
            missing.append(value)
        ok = bool(runs) and all(s is not None and math.isfinite(s) for s in runs)
        scores[value] = sum(runs) / len(runs) if ok else None
    good = [v for v, s in scores.items() if s is not None]
    if not good:
        return Pick(None, scores, tuple(missing))
    sign = 1 if direction == "min" else -1
    numeric = all(_number(v) for v in good)  # ties: the smaller value, else the earlier candidate
    best = min(good, key=lambda v: (sign * scores[v], v if numeric else good.index(v)))
    edge, beyond = beyond_edge(list(scores), best, digits)
    return Pick(best, scores, tuple(missing), edge, beyond)


@dataclasses.dataclass(frozen=True)
class Grid:
    """One selection: the candidates of ``flag`` tried on ``split`` (the split a reported number never reads),
    scored by ``metric`` of each run's summary.json (``direction``: "min" a loss, "max" an accuracy), averaged over
    the study's selection seeds; ``extend``: how many times a pick at the edge adds the next value beyond it (0: it
    is only reported); ``digits``: significant digits of such a value; ``valid``: the study's own test of a run
    (e.g. below its unigram perplexity); ``arm``: the arm whose selection runs choose (default: the grid's name)."""

    flag: str
    values: tuple
    metric: str
    direction: str
    split: str = "validation"
    extend: int = 0
    digits: int = 3
    valid: Callable[[Mapping], bool] | None = None
    arm: str = ""

    def __post_init__(self):
        check(self.direction in DIRECTIONS, f"grid {self.flag}: direction is one of {', '.join(DIRECTIONS)}, "
                                            f"got {self.direction!r}")
        check(len(self.values) >= 1 and len(set(self.values)) == len(self.values),
              f"grid {self.flag}: expected distinct candidates, got {list(self.values)}")
        check(self.extend >= 0 and self.digits >= 1, f"grid {self.flag}: extend >= 0 and digits >= 1")

    def pick(self, records: Mapping[object, Sequence[Mapping | None]]) -> Pick:
        """``choose`` over ``records`` {candidate: [summary.json of each selection seed's run, None if missing]}."""
        return self.choose({v: [score_of(s, self.metric, self.valid) for s in runs] for v, runs in records.items()})

    def choose(self, per_seed: Mapping[object, Sequence[float | None]]) -> Pick:
        """``choose`` by this grid's direction and digits over scores already read (a selection.json's)."""
        return choose(per_seed, self.direction, self.digits)


def extended(grids: Mapping[str, Grid], run: Callable[[dict[str, list]], Mapping | None]) -> dict[str, Pick] | None:
    """Select with every grid of ``grids`` {name: grid} together, extending them: ``run({name: candidates})``
    trains the runs not finished (all grids' at once: one plan) and returns their records {name: {candidate:
    [summary of each selection seed's run]}}, or None when they are not all done (a dry run, an interrupted grid;
    then None is returned); a pick at the edge adds its ``beyond`` and all run again, each grid at most its
    ``extend`` times."""
    values = {name: list(g.values) for name, g in grids.items()}
    for extension in range(max((g.extend for g in grids.values()), default=0) + 1):
        records = run(values)
        if records is None:
            return None
        picks = {name: g.pick(records[name]) for name, g in grids.items()}
        wider = {name: sorted([*values[name], p.beyond]) for name, p in picks.items()
                 if p.beyond is not None and extension < grids[name].extend}
        if not wider:
            return picks
        values |= wider
    return None  # not reached: the pass after every grid's last extension widens nothing and returns


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: ``script`` (a module, ``mamba_fl.fed_avg``) with ``flags``; ``select``: the grid whose pick it
    takes (its flag and value are added to the flags), if any."""

    name: str
    script: str
    flags: tuple[str, ...] = ()
    select: str | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``arm`` minus ``reference`` in ``metric``, paired by seed, Holm-corrected with every comparison of its
    ``family`` (a conclusion drawn across tables needs a family that spans them)."""

    arm: str
    reference: str
    family: str
    metric: str = ""   # which of the arms' values (e.g. "plateau" or "budget"), where a table shows several


@dataclasses.dataclass(frozen=True)
class Study:
    """What a study fixes: arms, reported seeds, selection grids (run at ``selection_seeds``, apart from the
    reported ones), budgets {name: flags} (one run per arm, budget and seed; one unnamed budget by default), the
    plateau rule and the comparisons; ``compute``: what two compared arms are matched on (one of ``COMPUTE``;
    empty: not stated, e.g. each arm run to its own plateau); ``seed_flag`` is the scripts' seed flag."""

    name: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    grids: Mapping[str, Grid] = dataclasses.field(default_factory=dict)
    selection_seeds: tuple[int, ...] = ()
    budgets: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: {"": ()})
    plateau: Plateau | None = None
    comparisons: tuple[Comparison, ...] = ()
    compute: str = ""
    seed_flag: str = "--seed"

    def __post_init__(self):
        self.check()

    def arm(self, name: str) -> Arm:
        found = [a for a in self.arms if a.name == name]
        check(bool(found), f"study {self.name}: no arm {name!r} (its arms: {', '.join(a.name for a in self.arms)})")
        return found[0]

    def check(self) -> None:
        """The study's names agree: arms distinct, each arm's grid declared, each comparison between two arms,
        seeds distinct, selection seeds apart from the reported ones, the plateau's budget one of the budgets."""
        names = [a.name for a in self.arms]
        check(len(set(names)) == len(names), f"study {self.name}: an arm is named twice in {names}")
        check(len(set(self.seeds)) == len(self.seeds) and not set(self.seeds) & set(self.selection_seeds),
              f"study {self.name}: seeds {list(self.seeds)} must be distinct and apart from the selection seeds "
              f"{list(self.selection_seeds)}")
        for a in self.arms:
            check(a.select is None or a.select in self.grids, f"study {self.name}: arm {a.name} selects on "
                                                              f"{a.select!r}, not one of its grids {list(self.grids)}")
        check(not self.grids or bool(self.selection_seeds), f"study {self.name}: a selection needs selection seeds")
        for name, g in self.grids.items():
            check((g.arm or name) in names, f"study {self.name}: grid {name} is run by arm {g.arm or name!r}, "
                                            f"not one of {names}")
        for c in self.comparisons:
            check(c.arm in names and c.reference in names, f"study {self.name}: comparison {c.arm} - "
                                                           f"{c.reference} names an arm it lacks ({names})")
        check(self.compute in ("", *COMPUTE), f"study {self.name}: compute is one of {', '.join(COMPUTE)}, got "
                                              f"{self.compute!r}")
        check(self.plateau is None or self.plateau.check_budget in (None, *self.budgets),
              f"study {self.name}: the plateau's budget is not one of {list(self.budgets)}")

    def families(self) -> dict[str, list[Comparison]]:
        """{family: its comparisons}: each one Holm correction."""
        out: dict[str, list[Comparison]] = {}
        for c in self.comparisons:
            out.setdefault(c.family, []).append(c)
        return out


def _shown(value) -> str:
    return f"{value:g}" if _number(value) else str(value)


def run_name(arm: str, seed: int, budget: str = "", select: tuple[str, object] | None = None) -> str:
    """``fedavg_s0``, ``fedavg_R384_s0``; a selection run: ``select_fedavg_lr0.01_s100``."""
    setting = f"_{select[0].lstrip('-')}{_shown(select[1])}" if select else ""
    return f"{'select_' if select else ''}{arm}{'_' + budget if budget else ''}{setting}_s{seed}"


def _job(study: Study, arm: Arm, argv: list[str], seed: int, folder: Path, name: str) -> jobs.Job:
    return jobs.Job(name, arm.script, [*arm.flags, *argv, study.seed_flag, str(seed), "--out-dir", str(folder),
                                       "--run-name", name])


def selection_jobs(study: Study, grid: str, folder: Path, values: Sequence | None = None,
                   budget: str | None = None) -> list[jobs.Job]:
    """The selection runs of ``grid`` (its candidates, or ``values`` once extended) for every selection seed, by
    its arm, at ``budget`` (default: the study's first), into ``folder``: candidate-major, seeds together."""
    g, budget = study.grids[grid], next(iter(study.budgets)) if budget is None else budget
    arm = study.arm(g.arm or grid)
    return [_job(study, arm, [*study.budgets[budget], g.flag, _shown(v)], seed, folder,
                 run_name(arm.name, seed, budget, (g.flag, v)))
            for v in (g.values if values is None else values) for seed in study.selection_seeds]


def selection_records(plan: Sequence[jobs.Job], values: Sequence, seeds: Sequence[int]) -> dict:
    """{value: [summary of each seed's run]} of ``selection_jobs``' plan at ``values`` (None: not finished)."""
    summaries = iter([jobs.summary_of(j) for j in plan])
    return {v: [next(summaries) for _ in seeds] for v in values}


def reported_jobs(study: Study, folder: Path, chosen: Mapping[str, object]) -> list[jobs.Job]:
    """The reported runs: every seed, budget and arm (seed-major: an interrupted study has every arm of its first
    seeds), an arm that selects at ``chosen[grid]``."""
    out = []
    for seed in study.seeds:
        for budget, flags in study.budgets.items():
            for arm in study.arms:
                check(arm.select is None or arm.select in chosen, f"study {study.name}: no value chosen for "
                                                                  f"{arm.select} (arm {arm.name})")
                picked = [study.grids[arm.select].flag, _shown(chosen[arm.select])] if arm.select else []
                out.append(_job(study, arm, [*flags, *picked], seed, folder, run_name(arm.name, seed, budget)))
    return out


# ------------------------------------------------------------------------------------------ the selection record
SELECTION_FILE = "selection.json"
SELECTION_KEYS = ("study", "criterion", "runs", "choices")
CHOICE_KEYS = ("flag", "split", "metric", "direction", "scores", "chosen", "edge", "beyond", "extended")
EDGES = (None, "low", "high")


def candidate_key(value) -> str:
    """A candidate as selection.json spells it: 0.01 -> "0.01", 1.0 -> "1", "local" -> "local"."""
    return _shown(value)


def choice_record(grid: Grid, pick: Pick, extended: Sequence = (), why: Mapping | None = None,
                  setting_flag: str | None = None) -> dict:
    """One setting's entry of selection.json from ``grid`` and what it chose (``pick``): every candidate's score, a
    number, or ``why`` {candidate: word} it is none (default "missing" for a run not finished, else "not a
    result": it diverged or failed the study's test); ``extended``: the values added past an edge."""
    why = dict(why or {})
    scores = {}
    for value, score in pick.scores.items():
        scores[candidate_key(value)] = (score if score is not None else why.get(value) or why.get(candidate_key(value))
                                        or ("missing" if value in pick.missing else "not a result"))
    return {"flag": setting_flag or grid.flag, "split": grid.split, "metric": grid.metric, "direction": grid.direction,
            "scores": scores, "chosen": pick.value, "edge": pick.edge, "beyond": pick.beyond,
            "extended": list(extended)}


def _valid_choice(where: str, choice) -> None:
    check(isinstance(choice, dict) and set(CHOICE_KEYS) <= set(choice),
          f"{where}: expected an object with {', '.join(CHOICE_KEYS)}")
    check(choice["direction"] in DIRECTIONS and choice["edge"] in EDGES and isinstance(choice["extended"], list),
          f"{where}: direction one of {', '.join(DIRECTIONS)}, edge one of low, high or null, extended a list")
    scores = choice["scores"]
    check(isinstance(scores, dict) and all(isinstance(v, str) or (_number(v) and math.isfinite(v))
                                           for v in scores.values()),
          f"{where}: scores maps each candidate to a finite number or a word saying why it has none")
    check(choice["chosen"] is None or candidate_key(choice["chosen"]) in scores,
          f"{where}: chosen {choice['chosen']!r} is not one of its candidates {list(scores)}")


def selection_record(study: str, criterion: str, choices: Mapping[str, dict], **runs) -> dict:
    """selection.json's content: ``study``, the rule in words, what the selection runs shared (``runs``: seeds,
    rounds, the base model ...) and {setting: ``choice_record``}; checked as ``read_selection`` checks it."""
    record = {"study": study, "criterion": criterion, "runs": dict(runs), "choices": dict(choices)}
    for setting, choice in record["choices"].items():
        _valid_choice(f"selection of {study}, setting {setting!r}", choice)
    return record


def write_selection(path: str | Path, study: str, criterion: str, choices: Mapping[str, dict],
                    keep: bool = False, **runs) -> dict:
    """Write selection.json (atomically) and return it; ``keep``: settings already in ``path`` that ``choices``
    lacks stay (a grid run part by part keeps the other parts' choices)."""
    old = read_selection(path)["choices"] if keep and Path(path).is_file() else {}
    record = selection_record(study, criterion, {**old, **choices}, **runs)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def read_selection(path: str | Path, missing: str | None = None) -> dict:
    """A selection.json, checked: a one-line ``UsageError`` naming the file when it is not one (an older layout, a
    hand edit that broke it)."""
    record = read_json(path, missing)
    try:
        check(isinstance(record, dict) and set(SELECTION_KEYS) <= set(record) and isinstance(record["choices"], dict)
              and isinstance(record["runs"], dict), f"expected an object with {', '.join(SELECTION_KEYS)}")
        for setting, choice in record["choices"].items():
            _valid_choice(f"setting {setting!r}", choice)
    except UsageError as e:
        raise UsageError(f"{path}: not a selection record ({e})") from None
    return record


def chosen(record: Mapping, prefix: str = "") -> dict:
    """{setting: value chosen} of a selection record, the settings under ``prefix`` ("sst2/") without it."""
    return {k.removeprefix(prefix): c["chosen"] for k, c in record["choices"].items() if k.startswith(prefix)}


def numeric_scores(choice: Mapping) -> dict:
    """{candidate as a number where it is one: score} of a choice's candidates that scored (the words left out)."""
    def key(text: str):
        try:
            return float(text)
        except ValueError:
            return text
    return {key(k): v for k, v in choice["scores"].items() if not isinstance(v, str)}
