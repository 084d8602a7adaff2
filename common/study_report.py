"""A study's comparisons as its tables state them: each comparison the study declares, paired by seed and
Holm-corrected over the family the study declares for it (not over whatever table it lands in), with the reasons
not to take it at its word next to the verdict: fewer than ``MIN_SEEDS`` seeds, an arm short of its plateau, a
selected value at the edge of its grid.

    found = compare(study, values, notes)     # values(arm, metric) -> {seed: value}; notes(arm, metric) -> [reason]
    d, claim, warnings = found[comparison]    # Paired, "p_Holm = 0.029 over 6" sentence, ("2/5 still improving",)
    cell = warned(f"{d.mean:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]", warnings)

The verdict sentences are ``common.stats.claim``'s (one vocabulary: "p_Holm = x over m" names its family's size);
the notes of an arm come from its records (``still_improving``) and from the selection (``edge_note``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from common import stats
from common.study import Comparison, Study, beyond_edge

MIN_SEEDS = 3  # fewer paired seeds than this: the interval says little, and the table says so


@dataclasses.dataclass(frozen=True)
class Finding:
    """One comparison: the paired difference, its verdict sentence over its family, and the warnings beside it."""

    paired: stats.Paired
    claim: str
    warnings: tuple[str, ...] = ()

    def __iter__(self):
        return iter((self.paired, self.claim, self.warnings))


def compare(study: Study, values: Callable[[str, str], Mapping], notes: Callable[[str, str], Sequence[str]]
            | None = None, digits: int = 1, unit: str = "") -> dict[Comparison, Finding]:
    """{comparison: Finding} of every comparison of ``study`` whose two arms have values (``values(arm, metric)``
    -> {seed: value}), Holm-corrected over each declared family; the warnings: the seed count when below
    ``MIN_SEEDS``, then ``notes(arm, metric)`` of the compared arm (its plateau, its selection)."""
    out = {}
    for comparisons in study.families().values():
        pairs = {c: (values(c.arm, c.metric), values(c.reference, c.metric)) for c in comparisons}
        diffs = {c: stats.paired(a, b) for c, (a, b) in pairs.items() if a and b}
        verdicts, m = stats.holm(diffs), sum(d.n >= 2 for d in diffs.values())
        for c, d in diffs.items():
            seeds = [f"{d.n} seed{'s' if d.n != 1 else ''}"] if d.n < MIN_SEEDS else []
            out[c] = Finding(d, stats.claim(d, verdicts[c], m, digits, unit),
                             (*seeds, *(notes(c.arm, c.metric) if notes else ())))
    return out


def warned(cell: str, warnings: Sequence[str]) -> str:
    """A table cell with its warnings after it: '+3.1 [-0.0, +6.3]; 2/3 still improving'."""
    return "; ".join([cell, *warnings])


def still_improving(runs: Sequence[Mapping], best: Callable[[Mapping], object], last: Callable[[Mapping], object]) \
        -> str | None:
    """'2/5 still improving' when some of an arm's runs had their best evaluation at their last one (``best(run)``
    == ``last(run)``): a run stopped there has not been shown to be at its plateau; None when none did."""
    short = sum(best(r) == last(r) for r in runs)
    return f"{short}/{len(runs)} still improving" if short else None


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
