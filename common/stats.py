"""Statistics over seeds, shared by every results table and figure of the toolkit.

    s = summarize([49.8, 52.1, 47.4])          # mean, sample sd (ddof=1), n, 95% t interval of the mean
    fmt(s)                                     # '49.8 ± 2.4 (n=3)'; one value is shown as '49.8 (n=1)'
    d = paired({0: 50.1, 1: 48.0, 2: 51.2},    # differences a - b matched by seed
               {0: 44.0, 1: 45.1, 2: 49.9})
    fmt_diff(d)                                # '+3.4 [-1.3, +8.2] (n=3), no difference'

The 95% interval is mean ± t(0.975, n-1) · sd / sqrt(n). A paired difference whose interval contains 0 is
reported as "no difference". The Student-t quantile is computed here (regularized incomplete beta function
by continued fraction, inverted by bisection) so the toolkit does not depend on scipy; the tests compare it
with ``scipy.stats.t.ppf``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` > 0 degrees of freedom (scipy.stats.t.ppf)."""
    if not 0.0 < q < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
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
    if n == 0:
        nan = float("nan")
        return nan, nan, 0, nan, nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, float("nan"), n, float("nan"), float("nan")
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

