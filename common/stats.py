"""Statistics over seeds, shared by every results table and figure of the toolkit.

    s = summarize([49.8, 52.1, 47.4])          # mean, sample sd (ddof=1), n, 95% t interval of the mean
    fmt(s)                                     # '49.8 ± 2.4 (n=3)'; one value is shown as '49.8 (n=1)'
    d = paired({0: 50.1, 1: 48.0, 2: 51.2},    # differences a - b matched by seed
               {0: 44.0, 1: 45.1, 2: 49.9})
    fmt_diff(d)                                # '+3.4 [-1.3, +8.2] (n=3), no difference'
    holm({"a-b": d, "c-b": d2})                # Holm-corrected verdicts for the comparisons of one table
    table_rows({"fedavg": {0: 44.0, 1: 45.1},  # a results table's cells: mean ± sd, and the difference to
                "fisher": {0: 50.1, 1: 48.0}}, ref="fedavg")  # the reference arm with Holm's verdict

The 95% interval is mean ± t(0.975, n-1) · sd / sqrt(n); a paired difference whose interval contains 0 is
"no difference", and rules out effects beyond ``ruled_out(d)``. A table's comparisons are corrected together
by Holm's step-down method (family-wise error 5% under any dependence); what its nulls rule out comes from
Bonferroni intervals (level 1 - 0.05/m). The Student-t quantile is computed here (exact CDF for integer df,
inverted by bisection; tested against ``scipy.stats.t.ppf``), so the toolkit does not need scipy.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

LEVEL = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer ``df`` >= 1 degrees of freedom, exact (Abramowitz & Stegun
    26.7.3-4: a finite series in cos(theta), theta = atan(|t| / sqrt(df)))."""
    if df < 1 or df != int(df):
        raise ValueError(f"t_cdf needs an integer df >= 1 (n - 1 of n seeds), got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    for k in range(1, int(df) // 2):  # odd df: 1 + 2/3 c2 + 2*4/(3*5) c2^2 ...; even: 1 + 1/2 c2 + 1*3/(2*4) c2^2
        term *= c2 * ((2 * k) / (2 * k + 1) if df % 2 else (2 * k - 1) / (2 * k))
        total += term
    if df % 2:  # P(|T| <= t)
        inside = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    else:
        inside = math.sin(theta) * total
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with an integer ``df`` >= 1 degrees of freedom (scipy.stats.t.ppf)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile needs 0 < q < 1, got q={q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """Mean, sample sd (ddof=1), n and the 95% t interval of the mean; sd and the interval are nan for n < 2."""
    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return 0.5 * (self.hi - self.lo)


@dataclass(frozen=True)
class Paired(Summary):
    """A paired difference a - b over matched seeds: its Summary plus the per-seed differences."""
    keys: tuple = ()
    diffs: tuple = ()

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes 0 (needs n >= 2)."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def _finite(values: Iterable[float]) -> list[float]:
    out = [float(v) for v in values]
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"statistics over seeds need finite values, got {bad}")
    return out


def _summary(values: list[float], level: float = LEVEL) -> tuple[float, float, int, float, float]:
    n = len(values)
    nan = float("nan")
    if n == 0:
        return nan, nan, 0, nan, nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, nan, n, nan, nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, sd, n, mean - half, mean + half


def summarize(values: Iterable[float], level: float = LEVEL) -> Summary:
    """Summary of values over seeds (non-finite values are refused: a diverged run is reported as such)."""
    return Summary(*_summary(_finite(values), level))


def paired(a: Mapping, b: Mapping, level: float = LEVEL) -> Paired:
    """Paired difference a - b over the keys (seeds) both have, with its 95% t interval."""
    keys = tuple(sorted(set(a) & set(b), key=str))
    diffs = _finite(float(a[k]) - float(b[k]) for k in keys)
    return Paired(*_summary(diffs, level), keys=keys, diffs=tuple(diffs))


def fmt(s: Summary, digits: int = 1) -> str:
    """'49.8 ± 2.4 (n=3)'; 'n=1' shows the single value with no ±; no values: '–'."""
    if s.n == 0:
        return "–"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.sd:.{digits}f} (n={s.n})"


def fmt_diff(d: Paired, digits: int = 1) -> str:
    """'+3.4 [-1.3, +8.2] (n=3), no difference' or '... (n=3)' when the interval excludes 0."""
    if d.n == 0:
        return "–"
    if d.n == 1:
        return f"{d.mean:+.{digits}f} (n=1, no interval)"
    verdict = "" if d.significant else ", no difference"
    return f"{d.mean:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}] (n={d.n}){verdict}"


def p_value(d: Paired) -> float:
    """Two-sided p-value of the paired t-test of ``d`` (H0: mean difference 0); nan for n < 2."""
    if d.n < 2:
        return float("nan")
    if d.sd == 0:
        return 1.0 if d.mean == 0 else 0.0
    t = abs(d.mean) / (d.sd / math.sqrt(d.n))
    return min(1.0, 2.0 * (1.0 - t_cdf(t, d.n - 1)))


def ruled_out(d: Paired, m: int = 1) -> float:
    """max(|lo|, |hi|) of the 95% interval (nan for n < 2), or with ``m`` comparisons in the table of the
    Bonferroni interval at level 1 - 0.05/m (the m statements hold together): the effect sizes a "no
    difference" rules out ([-0.3, +0.4] rules out effects larger than 0.4)."""
    if d.n < 2:
        return float("nan")
    *_, lo, hi = _summary(list(d.diffs), 1 - (1 - LEVEL) / max(1, m))
    return max(abs(lo), abs(hi))


@dataclass(frozen=True)
class Verdict:
    """One comparison of a table after Holm's correction."""
    p: float            # the paired t-test's own p-value
    p_holm: float       # Holm-adjusted p-value (compare with 0.05)
    significant: bool   # p_holm < 1 - LEVEL


def holm_adjust(pvalues: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values in input order (statsmodels' ``multipletests(method="holm")``): sorted
    ascending, p_(i) times m - i, made non-decreasing, capped at 1. A nan (n < 2) stays nan, not counted in m."""
    ps = [float(p) for p in pvalues]
    tested = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    m, out, running = len(tested), [float("nan")] * len(ps), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def holm(comparisons: Mapping[str, Paired], alpha: float = 1 - LEVEL) -> dict[str, Verdict]:
    """Holm-corrected verdicts for the paired comparisons of one table (keys: the rows' names)."""
    names = list(comparisons)
    raw = [p_value(comparisons[k]) for k in names]
    return {k: Verdict(p, q, (not math.isnan(q)) and q < alpha) for k, p, q in zip(names, raw, holm_adjust(raw))}


def fmt_p(p: float) -> str:
    """A p-value as every table and sentence prints it: 2 significant digits ('0.0049', '0.05'), '< 0.001'
    below 0.001, 'n/a' for nan (fewer than 2 seeds)."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def fmt_verdict(d: Paired, v: Verdict, digits: int = 1, m: int = 1) -> str:
    """A table cell: '+3.4 [+1.3, +5.5] (n=3), p_Holm 0.012' or '+0.2 [-0.3, +0.4] (n=3), no difference after
    Holm (rules out > 0.6, simultaneous over 4)': the comparison's own 95% interval with the verdict corrected
    over the table's ``m`` comparisons (the ruled-out size is ``ruled_out(d, m)``). A table of one comparison
    corrects nothing and says so: 'p = 0.012 (a single comparison; no correction)'."""
    if d.n < 2:
        return fmt_diff(d, digits)
    head = f"{d.mean:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}] (n={d.n})"
    if m < 2:
        verdict = "" if v.significant else "no difference, "
        return f"{head}, {verdict}p {_is(v.p)} (a single comparison; no correction" + \
            ("" if v.significant else f"; rules out > {ruled_out(d):.{digits}f}") + ")"
    if v.significant:
        return f"{head}, p_Holm {fmt_p(v.p_holm)}"
    return f"{head}, no difference after Holm (rules out > {ruled_out(d, m):.{digits}f}, simultaneous over {m})"


def claim(d: Paired, v: Verdict, m: int, digits: int = 1, unit: str = "") -> str:
    """The one vocabulary of a sentence about a comparison, from its family of ``m`` (Holm) comparisons:
    '+1.6 [+1.2, +2.0] (n=5; p_Holm = 0.011 over 6)', '+0.6 [+0.5, +0.8] (n=3; no difference after Holm over 30;
    rules out > 1.4)' (the simultaneous interval), or with m = 1 '(n=5; p = 0.004, a single comparison; no
    correction)'. ``unit`` follows every number ('%', ' points')."""
    if d.n < 2:
        return f"{d.mean:+.{digits}f}{unit} (n={d.n}, no interval)"
    head = f"{d.mean:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]{unit}"
    if m < 2:
        what = "" if v.significant else "no difference, "
        return f"{head} (n={d.n}; {what}p {_is(v.p)}, a single comparison; no correction)"
    if v.significant:
        return f"{head} (n={d.n}; p_Holm {_is(v.p_holm)} over {m})"
    return (f"{head} (n={d.n}; no difference after Holm over {m}; rules out > "
            f"{ruled_out(d, m):.{digits}f}{unit})")


def _is(p: float) -> str:
    """'= 0.011' or '< 0.001'."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def explained(remainder: Paired, gap: float, m: int = 1) -> float:
    """How much of a ``gap`` (a mean difference ref - other, in its sign) a control accounts for, at least, when
    ``remainder`` is what is left of it (ref - control paired by seed): 1 - (the simultaneous interval's end in the
    gap's direction) / gap, clipped to [0, 1]. 0: the remainder's interval reaches the whole gap (nothing is
    explained); 1: it excludes any remainder in the gap's direction (all of it)."""
    if remainder.n < 2 or gap == 0:
        return 0.0
    *_, lo, hi = _summary(list(remainder.diffs), 1 - (1 - LEVEL) / max(1, m))
    far = hi if gap > 0 else -lo   # the largest remainder in the gap's direction the data allow
    return min(1.0, max(0.0, 1.0 - far / abs(gap)))


def fmt_seeds(values: Iterable, digits: int = 1) -> str:
    """``fmt`` of the finite values over seeds, with ', 2 diverged' when some are not finite numbers."""
    values = list(values)
    ok = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return fmt(summarize(ok), digits) + (f", {len(values) - len(ok)} diverged" if len(ok) < len(values) else "")


def compare(pairs: Mapping[Hashable, tuple[Mapping, Mapping]], digits: int = 1) -> dict[Hashable, tuple[Paired, str]]:
    """The comparisons of one table, {name: ({seed: a}, {seed: b})}, as {name: (a - b paired by seed over the
    finite values, its ``fmt_verdict`` cell)}: the verdicts Holm-corrected together."""
    diffs = {k: paired(*({s: v for s, v in x.items() if math.isfinite(v)} for x in ab)) for k, ab in pairs.items()}
    verdicts, m = holm(diffs), sum(d.n >= 2 for d in diffs.values())
    return {k: (d, fmt_verdict(d, verdicts[k], digits, m)) for k, d in diffs.items()}


def table_rows(values: Mapping[Hashable, Mapping], ref: Hashable = None, digits: int = 1,
               skip: Mapping[Hashable, str] | None = None) -> dict[Hashable, tuple[str, str]]:
    """{arm: (mean ± sd cell, difference cell)} from ``values`` {arm: {seed: value}}: the difference to arm
    ``ref`` paired by seed, verdicts Holm-corrected over the table ('reference' for ``ref``, '–' when ``ref``
    has no values). An arm in ``skip`` gets the cell ``skip[arm]`` (e.g. "diverged"), not a comparison."""
    skip = skip or {}
    cells = {a: "reference" if a == ref else skip.get(a, "–") for a in values}
    cells |= {a: cell for a, (_, cell) in compare({a: (v, values[ref]) for a, v in values.items()
                                                    if ref in values and a != ref and a not in skip}, digits).items()}
    return {a: (fmt_seeds(v.values(), digits), cells[a]) for a, v in values.items()}


def plateau_gain(curve: Sequence[float], tail: float = 1 / 3) -> float:
    """What a learning curve (evaluation order, higher is better: pass -loss) still gained at its end: the best
    of its last ``tail`` of points minus the best before them (at least one point each side; nan below 3
    points). At its plateau when below a table's tolerance; negative when its end fell below its earlier best."""
    values = [float(v) for v in curve]
    if len(values) < 3:
        return float("nan")
    cut = min(len(values) - 1, max(1, round(len(values) * (1 - tail))))
    return max(values[cut:]) - max(values[:cut])


def proportion(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (``scipy.stats.binomtest(k, n).proportion_ci(method=
    "wilson")``, tested against it): inside [0, 1] and not empty at k = 0 or k = n, where the normal interval
    collapses to a point; (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n, got {k}/{n}")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p, z2 = k / n, z * z / n
    centre, half = (p + z2 / 2) / (1 + z2), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n)) / (1 + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt_proportion(k: int, n: int, level: float = LEVEL) -> str:
    """'2/9 [6 %, 55 %]': the count and its Wilson interval in percent ('–' for n = 0)."""
    if n == 0:
        return "–"
    lo, hi = proportion(k, n, level)
    return f"{k}/{n} [{100 * lo:.0f} %, {100 * hi:.0f} %]"


def markdown(headers: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]
