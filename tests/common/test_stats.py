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


def test_p_value_matches_scipy_ttest_rel():
    a, b = [50.1, 48.0, 51.2, 47.3], [44.0, 45.1, 49.9, 47.0]
    d = stats.paired(dict(enumerate(a)), dict(enumerate(b)))
    assert stats.p_value(d) == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    assert math.isnan(stats.p_value(stats.paired({0: 1.0}, {0: 0.0})))


def test_holm_adjust_hand_computed():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> kept monotone at 0.06
    adjusted = stats.holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a comparison without an interval (nan) is not counted in m
    out = stats.holm_adjust([0.02, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_matches_statsmodels_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    ps = list(rng.uniform(0, 0.2, size=9))
    reject, adjusted, _, _ = multitest.multipletests(ps, alpha=0.05, method="holm")
    assert stats.holm_adjust(ps) == pytest.approx(list(adjusted), rel=1e-12)


def test_holm_verdicts_and_what_a_null_rules_out():
    clear = stats.paired({0: 10.0, 1: 11.0, 2: 12.0}, {0: 5.0, 1: 5.5, 2: 6.2})
    null = stats.paired({0: 1.0, 1: 2.0, 2: 1.5}, {0: 1.2, 1: 1.7, 2: 1.5})
    verdicts = stats.holm({"clear": clear, "null": null})
    assert verdicts["clear"].significant and not verdicts["null"].significant
    assert verdicts["clear"].p_holm == pytest.approx(min(1.0, 2 * stats.p_value(clear)))  # smallest p times m=2
    assert stats.ruled_out(null) == pytest.approx(max(abs(null.lo), abs(null.hi)))
    text = stats.fmt_verdict(null, verdicts["null"], digits=2, m=2)
    assert text.endswith(f"no difference after Holm (rules out > {stats.ruled_out(null, 2):.2f}, simultaneous over 2)")
    alone = stats.fmt_verdict(null, verdicts["null"], digits=2)  # a table of one comparison corrects nothing
    assert "a single comparison; no correction" in alone and alone.endswith(f"{stats.ruled_out(null):.2f})")
    # in a table of m comparisons the nulls rule out what the Bonferroni (simultaneous) interval does: wider
    half = stats.t_quantile(1 - 0.05 / 4, null.n - 1) * null.sd / null.n ** 0.5
    assert stats.ruled_out(null, m=2) == pytest.approx(abs(null.mean) + half)
    assert stats.ruled_out(null, m=2) > stats.ruled_out(null)
    cell = stats.compare({"clear": ({0: 10.0, 1: 11.0, 2: 12.0}, {0: 5.0, 1: 5.5, 2: 6.2}),
                          "null": ({0: 1.0, 1: 2.0, 2: 1.5}, {0: 1.2, 1: 1.7, 2: 1.5})}, 2)["null"][1]
    assert cell.endswith(f"(rules out > {stats.ruled_out(null, 2):.2f}, simultaneous over 2)")
    # significant alone but not after the correction: 3 comparisons whose p values sit just under 0.05
    borderline = {f"c{i}": stats.paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.3, 1: 0.9, 2: 2.5}) for i in range(3)}
    p = stats.p_value(borderline["c0"])
    assert 0.05 / 3 < p < 0.05
    assert not any(v.significant for v in stats.holm(borderline).values())


def test_t_cdf_matches_scipy_and_needs_integer_df():
    for df in (1, 2, 3, 6, 7, 30):
        for t in (-4.0, -0.3, 0.0, 1.1, 12.0):
            assert stats.t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="integer df"):
        stats.t_cdf(1.0, 2.5)


def test_table_rows_holm_over_the_table_and_diverged_arms():
    values = {"fedavg": {0: 30.0, 1: 31.0, 2: 29.0},
              "fisher": {0: 40.0, 1: 41.2, 2: 39.1},        # clearly worse
              "entropy": {0: 30.5, 1: 30.5, 2: 29.1},       # within noise
              "avgm": {0: 300.0, 1: 301.0, 2: 299.0},       # diverged: not compared
              "broken": {0: float("nan"), 1: 31.0, 2: 28.0}}
    rows = stats.table_rows(values, "fedavg", skip={"avgm": "diverged"})
    assert rows["fedavg"] == ("30.0 ± 1.0 (n=3)", "reference")
    assert rows["avgm"][1] == "diverged"
    assert rows["broken"][0] == "29.5 ± 2.1 (n=2), 1 diverged"  # the non-finite seed is left out and counted
    # Holm over the three comparisons: fisher, entropy and broken (the latter on its 2 finite seeds)
    diffs = {a: stats.paired({s: v for s, v in values[a].items() if math.isfinite(v)}, values["fedavg"])
             for a in ("fisher", "entropy", "broken")}
    verdicts = stats.holm(diffs)
    for arm in diffs:
        assert rows[arm][1] == stats.fmt_verdict(diffs[arm], verdicts[arm], m=3)
    assert "p_Holm" in rows["fisher"][1] and "no difference after Holm" in rows["entropy"][1]
    assert all(cell == "–" for _, cell in stats.table_rows(values, "missing").values())
    pairs = stats.compare({"a-b": (values["fisher"], values["entropy"])}, digits=2)
    d, cell = pairs["a-b"]
    assert d.n == 3 and cell.startswith(f"{d.mean:+.2f} [")


def test_markdown_table():
    assert stats.markdown(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]


def test_plateau_gain_is_the_last_third_over_the_best_before():
    assert stats.plateau_gain([0.5, 0.7, 0.8, 0.82, 0.83, 0.85]) == pytest.approx(0.85 - 0.82)  # 4 before, 2 after
    assert stats.plateau_gain([0.5, 0.9, 0.8, 0.85, 0.84, 0.86]) == pytest.approx(0.86 - 0.9)   # fell back: < 0
    assert stats.plateau_gain([0.1, 0.2, 0.6]) == pytest.approx(0.6 - 0.2)
    assert math.isnan(stats.plateau_gain([0.1, 0.2]))


@pytest.mark.parametrize("k,n", [(0, 1), (0, 6), (3, 6), (6, 6), (1, 9), (9, 9), (17, 40)])
def test_proportion_is_scipys_wilson_interval(k, n):
    want = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert stats.proportion(k, n) == pytest.approx((want.low, want.high), abs=1e-12)
    lo, hi = stats.proportion(k, n)
    assert 0 <= lo <= k / n <= hi <= 1 and hi - lo > 0.1  # never a point, even at 0/n or n/n


def test_fmt_proportion_and_what_is_refused():
    assert stats.fmt_proportion(0, 6) == "0/6 [0 %, 39 %]" and stats.fmt_proportion(0, 0) == "–"
    assert all(math.isnan(v) for v in stats.proportion(0, 0))
    with pytest.raises(ValueError):
        stats.proportion(4, 3)
