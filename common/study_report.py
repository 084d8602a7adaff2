"""A study's comparisons as its tables state them: each comparison the study declares, paired by seed and
Holm-corrected over the family the study declares for it (not over whatever table it lands in), with the reasons
not to take it at its word next to the verdict: fewer than ``MIN_SEEDS`` seeds, compute not matched as the study
states (``Study.compute``), an arm short of its plateau or not checked (``common.plateau``), a selected value at the
edge of its grid.

    found = compare(study, values, notes, spent)  # values(arm, metric) -> {seed: value}; notes(arm, metric) ->
    d, claim, warnings = found[comparison]        # [reason]; spent(arm, metric) -> {seed: steps, samples...}
    cell = warned(f"{d.mean:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]", warnings)   # '...; 2/5 still improving'
    clause = said(found[comparison])              # the claim, its warnings inside its parenthesis
    common, each = shared(found.values())         # a sentence over several: the warnings they all share once
    lines = table(study, values, [Text("arm", str), Value("acc %", "acc"), Delta("− FedAvg", "acc", "fedavg")])

The verdict sentences are ``common.stats.claim``'s (one vocabulary: "p_Holm = x over m" names its family's size);
the notes of an arm come from its records (``common.plateau.arm_note``) and from the selection (``edge_note``).
``table`` is every comparison table's writer: a row per arm, its columns its values (mean ± sd over seeds), its
declared comparisons (the claim and warnings above) and the caller's own cells.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from common import stats
from common.study import Comparison, Study, beyond_edge

MIN_SEEDS = 3  # fewer paired seeds than this: the interval says little, and the table says so
MATCHED = 0.01  # compute differing by more than this fraction (means over seeds) is not matched


@dataclasses.dataclass(frozen=True)
class Finding:
    """One comparison: the paired difference, its verdict sentence over its family, and the warnings beside it."""

    paired: stats.Paired
    claim: str
    warnings: tuple[str, ...] = ()

    def __iter__(self):
        return iter((self.paired, self.claim, self.warnings))


def unmatched(study: Study, arm: Mapping, reference: Mapping) -> str | None:
    """'unmatched compute (equal steps: 1.4e+03 vs 720)' when the two arms' compute {seed: amount} differ by more
    than ``MATCHED`` (means over seeds) in what ``study.compute`` says they share; None when matched or unknown."""
    if not study.compute or not arm or not reference:
        return None
    a, b = (sum(x.values()) / len(x) for x in (arm, reference))
    return None if abs(a - b) <= MATCHED * max(abs(a), abs(b)) else \
        f"unmatched compute ({study.compute}: {a:.3g} vs {b:.3g})"


def compare(study: Study, values: Callable[[str, str], Mapping], notes: Callable[[str, str], Sequence[str]]
            | None = None, digits: int = 1, unit: str = "", spent: Callable[[str, str], Mapping] | None = None) \
        -> dict[Comparison, Finding]:
    """{comparison: Finding} of every comparison of ``study`` whose two arms have values (``values(arm, metric)``
    -> {seed: value}), Holm-corrected over each declared family; the warnings: the seed count when below
    ``MIN_SEEDS``, compute not matched (``unmatched`` of ``spent(arm, metric)`` -> {seed: amount}), then
    ``notes(arm, metric)`` of the compared arm (its plateau, its selection)."""
    out = {}
    for comparisons in study.families().values():
        pairs = {c: (values(c.arm, c.metric), values(c.reference, c.metric)) for c in comparisons}
        diffs = {c: stats.paired(a, b) for c, (a, b) in pairs.items() if a and b}
        verdicts, m = stats.holm(diffs), sum(d.n >= 2 for d in diffs.values())
        for c, d in diffs.items():
            seeds = [f"{d.n} seed{'s' if d.n != 1 else ''}"] if d.n < MIN_SEEDS else []
            compute = unmatched(study, spent(c.arm, c.metric), spent(c.reference, c.metric)) if spent else None
            out[c] = Finding(d, stats.claim(d, verdicts[c], m, digits, unit),
                             (*seeds, *([compute] if compute else []), *(notes(c.arm, c.metric) if notes else ())))
    return out


def said(finding: Finding, warnings: Sequence[str] | None = None) -> str:
    """A sentence's clause: the claim with its warnings (``finding.warnings`` unless given) inside its closing
    parenthesis: '+8.3 [+6.1, +10.5] (n=3; no difference after Holm over 30; rules out > 20.8; 3/3 still
    improving)'."""
    warnings = finding.warnings if warnings is None else warnings
    if not warnings:
        return finding.claim
    if finding.claim.endswith(")"):
        return f"{finding.claim[:-1]}; {'; '.join(warnings)})"
    return f"{finding.claim} ({'; '.join(warnings)})"


def shared(findings: Sequence[Finding]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(the warnings every one of ``findings`` has, in order; each one's other warnings): a sentence over several
    comparisons states what they share once."""
    findings = list(findings)
    common = tuple(w for w in findings[0].warnings if all(w in f.warnings for f in findings)) if findings else ()
    return common, [tuple(w for w in f.warnings if w not in common) for f in findings]


def warned(cell: str, warnings: Sequence[str]) -> str:
    """A table cell with its warnings after it: '+3.1 [-0.0, +6.3]; 2/3 still improving'."""
    return "; ".join([cell, *warnings])


def edge_note(scores: Mapping[str, object], chosen, flag: str = "rate") -> str | None:
    """'rate at the high edge of its grid' when ``chosen`` is the smallest or largest of the candidates tried
    (``scores``' keys, as selection.json spells them), None inside it."""
    def number(text) -> float | None:
        try:
            return float(text)
        except (TypeError, ValueError):  # a named choice ("local"): no edge
            return None

    tried = [v for v in map(number, scores) if v is not None]
    edge, _ = beyond_edge(tried, chosen)
    return f"{flag} at the {edge} edge of its grid" if edge else None


# ------------------------------------------------------------------------------------------------ tables
@dataclasses.dataclass(frozen=True)
class Value:
    """A column of the values in ``metric`` of the arm ``of(row)`` (default: the row's own): mean ± sample sd over
    its seeds, '(n=2)' when not the study's seed count, ', 1 diverged' for the values that are not finite."""

    header: str
    metric: str = ""
    of: Callable[[str], str] | None = None


@dataclasses.dataclass(frozen=True)
class Delta:
    """A column of comparisons in ``metric``: the one the study declares of the arm ``of(row)`` (default: the
    row's own) against ``reference`` (an arm, or ``reference(row)``; None: any) within ``family`` (None: any),
    as its claim over its family with its warnings after it; '= −Δ in row ...' where the study declares the
    comparison the other way round, '–' where it declares none or one side has no values."""

    header: str
    metric: str = ""
    reference: str | Callable[[str], str] | None = None
    family: str | None = None
    of: Callable[[str], str] | None = None


@dataclasses.dataclass(frozen=True)
class Text:
    """A column the table's caller fills: ``cell(row)`` (a rate, a compute ratio, a plateau count)."""

    header: str
    cell: Callable[[str], object]


def seeds_cell(values: Sequence[float], seeds: int, digits: int = 1) -> str:
    """'49.8 ± 2.4' over the finite ``values``, '(n=2)' after it when they are not ``seeds`` many, ', 1 diverged'
    for those that are not finite; '–' for none."""
    values = list(values)
    ok = [v for v in values if math.isfinite(v)]
    s = stats.summarize(ok)
    cell = "–" if not ok else f"{s.mean:.{digits}f}" + (f" ± {s.sd:.{digits}f}" if s.n > 1 else "") + \
        (f" (n={s.n})" if s.n != seeds else "")
    return cell + (f", {len(values) - len(ok)} diverged" if len(ok) < len(values) else "")


def table(study: Study, values: Callable[[str, str], Mapping], columns: Sequence[Value | Delta | Text],
          rows: Sequence[str] | None = None, notes: Callable[[str, str], Sequence[str]] | None = None,
          spent: Callable[[str, str], Mapping] | None = None, labels: Mapping[str, str] | None = None,
          digits: int = 1, skip: Mapping[str, str] | None = None) -> list[str]:
    """The Markdown lines of a comparison table of ``study``: one line per row (default: the study's arms), one
    cell per column. Every comparison is ``compare``'s over its declared family (its verdict in ``stats.claim``'s
    words, its warnings beside it: seeds, compute from ``spent``, ``notes``) on the finite values of ``values(arm,
    metric)`` -> {seed: value}; an arm in ``skip`` {arm: text} (e.g. "diverged") is compared with nothing and its
    comparisons' cells say ``skip[arm]``. ``labels`` {arm: label} name the row a reversed comparison points to."""
    skip, labels = skip or {}, labels or {}

    def finite(arm: str, metric: str) -> dict:
        return {} if arm in skip else {s: v for s, v in values(arm, metric).items() if math.isfinite(v)}

    found = compare(study, finite, notes, digits, spent=spent)

    def declared(column: Delta, arm: str, ref: str | None) -> Comparison | None:
        return next((c for c in study.comparisons if c.arm == arm and c.metric == column.metric
                     and ref in (None, c.reference) and column.family in (None, c.family)), None)

    def cell(column, row: str) -> object:
        if isinstance(column, Text):
            return column.cell(row)
        arm = column.of(row) if column.of else row
        if isinstance(column, Value):
            return seeds_cell(values(arm, column.metric).values(), len(study.seeds), digits)
        ref = column.reference(row) if callable(column.reference) else column.reference
        c = declared(column, arm, ref)
        if c is not None and arm in skip:
            return skip[arm]
        if c in found:
            return warned(found[c].claim, found[c].warnings)
        back = declared(column, ref, arm) if ref is not None and c is None else None
        return f"= −Δ in row '{labels.get(ref, ref)}'" if back in found else "–"

    return stats.markdown([c.header for c in columns],
                          [[cell(c, row) for c in columns] for row in (rows or [a.name for a in study.arms])])
