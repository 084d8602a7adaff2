"""common.stats against scipy.stats on known values: t quantiles, sample sd, intervals, paired differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from common import stats


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 200])
@pytest.mark.parametrize("q", [0.975, 0.95, 0.5, 0.025, 0.9995])
def test_t_quantile_matches_scipy(q, df):
    assert stats.t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-9, abs=1e-12)


def test_t_quantile_known_values():
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302652729911275, rel=1e-10)  # the n=3 interval factor
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706204736174704, rel=1e-10)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_summarize_matches_scipy():
    values = [49.8, 52.1, 47.4, 55.0]
    s = stats.summarize(values)
    assert s.n == 4 and s.mean == pytest.approx(np.mean(values))
    assert s.sd == pytest.approx(np.std(values, ddof=1))
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (s.lo, s.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert stats.fmt(s) == "51.1 ± 3.2 (n=4)"


def test_one_value_has_no_sd_and_says_n1():
    s = stats.summarize([7.25])
    assert s.n == 1 and math.isnan(s.sd) and math.isnan(s.lo)
    assert stats.fmt(s, 2) == "7.25 (n=1)"
    assert stats.fmt(stats.summarize([])) == "–"


def test_non_finite_values_refused():
    with pytest.raises(ValueError, match="finite"):
        stats.summarize([1.0, float("nan")])


def test_paired_difference_matches_scipy_ttest():
    a = {0: 50.1, 1: 48.0, 2: 51.2, 3: 47.0}
    b = {0: 44.0, 1: 45.1, 2: 49.9, 9: 1.0}  # seed 9 has no partner, seed 3 neither: both left out
    d = stats.paired(a, b)
    diffs = [50.1 - 44.0, 48.0 - 45.1, 51.2 - 49.9]
    assert d.keys == (0, 1, 2) and d.diffs == pytest.approx(tuple(diffs))
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(diffs), scale=sps.sem(diffs))
    assert (d.lo, d.hi) == (pytest.approx(lo), pytest.approx(hi))
    # the interval excludes 0 exactly when the paired t-test rejects at 5%
    p = sps.ttest_rel([a[k] for k in d.keys], [b[k] for k in d.keys]).pvalue
    assert d.significant == (p < 0.05)
    assert stats.fmt_diff(d).endswith("(n=3), no difference") == (not d.significant)


def test_clear_difference_is_significant():
    d = stats.paired({0: 10.0, 1: 11.0, 2: 12.0}, {0: 5.0, 1: 5.5, 2: 6.2})
    assert d.significant and d.lo > 0
    assert stats.fmt_diff(d) == f"+{d.mean:.1f} [+{d.lo:.1f}, +{d.hi:.1f}] (n=3)"
