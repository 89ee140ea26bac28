"""The statistics of trainer/stats.py: report eq. (1) on hand-computed values, every test
against scipy on random paired samples, Holm against a brute-force definition and statsmodels'
values, the few-shot label saving on the report's own numbers, and the degenerate cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from scarce.trainer.stats import (
    _exact_tied_pvalue,
    bootstrap_ci,
    holm_bonferroni,
    label_saving,
    paired_t_test,
    paired_z,
    prob_improvement,
    verdict,
    wilcoxon_signed_rank,
)


def test_paired_z_on_hand_computed_values():
    # d = 2, 3, 2, 5: mean 3, sd sqrt(2), z = 3 / (sqrt(2) / 2) = 3 * sqrt(2)
    result = paired_z([12, 13, 12, 15], [10, 10, 10, 10])
    assert result.n == 4
    assert result.mean_diff == pytest.approx(3.0)
    assert result.sd_diff == pytest.approx(math.sqrt(2))
    assert result.z == pytest.approx(3 * math.sqrt(2))


def test_paired_z_is_the_paired_t_statistic():
    treated = [55.1, 61.0, 48.2, 70.4, 66.6, 52.3, 59.9]
    control = [40.0, 58.2, 47.9, 60.1, 51.0, 50.5, 49.0]
    assert paired_z(treated, control).z == pytest.approx(
        scipy_stats.ttest_rel(treated, control).statistic, rel=1e-12
    )


def test_negative_gain_gives_negative_z():
    assert paired_z([1, 2, 1], [3, 3, 4]).z < 0


@pytest.mark.parametrize(
    ("treated", "control", "note"),
    [
        ([], [], "no pairs"),
        ([5.0], [3.0], "fewer than 2 pairs"),
        ([5.0, 6.0, 7.0], [3.0, 4.0, 5.0], "zero variance"),
    ],
)
def test_degenerate_cases_are_stated_not_nan(treated, control, note):
    result = paired_z(treated, control)
    assert result.z is None
    assert note in result.note


def test_unpaired_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_z([1, 2, 3], [1, 2])


# --- helpers -----------------------------------------------------------------------------------


def _paired_sample(seed: int, n: int, *, integers: bool = False) -> tuple[list, list]:
    """Random paired accuracies: control ~ 50, treated = control + a gain with noise."""
    rng = np.random.default_rng(seed)
    if integers:  # accuracy on a small test split: coarse steps, so ties and zero gains
        control = rng.integers(40, 60, size=n).astype(float)
        treated = control + rng.integers(-3, 6, size=n)
    else:
        control = rng.normal(50.0, 8.0, size=n)
        treated = control + rng.normal(rng.uniform(-2.0, 6.0), 4.0, size=n)
    return treated.tolist(), control.tolist()


SAMPLES = [(seed, n) for seed in (0, 1, 2, 3) for n in (2, 3, 7, 15, 40)]


# --- paired t-test -----------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n"), SAMPLES)
def test_paired_t_test_matches_scipy_ttest_rel(seed, n):
    treated, control = _paired_sample(seed, n)
    ours = paired_t_test(treated, control)
    ref = scipy_stats.ttest_rel(treated, control)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-9)
    assert ours.df == n - 1 == ref.df
    assert ours.n == n
    assert ours.mean_diff == pytest.approx(np.mean(np.subtract(treated, control)), abs=1e-9)
    assert ours.note is None
    ci = ref.confidence_interval(0.95)
    assert ours.ci95 == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("seed", "n"), SAMPLES)
def test_paired_t_statistic_is_exactly_eq_1(seed, n):
    treated, control = _paired_sample(seed, n)
    assert paired_t_test(treated, control).statistic == paired_z(treated, control).z


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.99])
def test_paired_t_ci_at_other_levels_matches_scipy_t_interval(confidence):
    treated, control = _paired_sample(7, 11)
    d = np.subtract(treated, control)
    ref = scipy_stats.t.interval(
        confidence, len(d) - 1, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(len(d))
    )
    result = paired_t_test(treated, control, confidence=confidence)
    assert result.ci95 == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert result.confidence == confidence


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("treated", "control", "mean", "ci", "df", "note"),
    [
        ([], [], None, None, None, "no pairs"),
        ([5.0], [3.0], 2.0, None, None, "fewer than 2 pairs"),
        ([5.0, 6.0, 7.0], [3.0, 4.0, 5.0], 2.0, (2.0, 2.0), 2, "zero variance"),
        ([4.0, 4.0], [4.0, 4.0], 0.0, (0.0, 0.0), 1, "zero variance"),
        # 0.3 - 0.1 and 0.6 - 0.4 differ in the last bits: still zero variance, not t = 1e16
        ([0.3, 0.6], [0.1, 0.4], pytest.approx(0.2), (pytest.approx(0.2),) * 2, 1, "zero var"),
    ],
)
def test_paired_t_test_degenerate_cases_are_stated_not_nan(treated, control, mean, ci, df, note):
    result = paired_t_test(treated, control)
    assert result.statistic is None
    assert result.pvalue is None
    assert result.mean_diff == mean
    assert result.df == df
    assert result.ci95 == (None if ci is None else pytest.approx(ci))
    assert note in result.note


@pytest.mark.filterwarnings("error")
def test_paired_t_test_huge_t_gives_a_tiny_p_not_nan():
    result = paired_t_test([10.0, 10.0 + 1e-6, 10.0 - 1e-6], [0.0, 0.0, 0.0])
    assert result.statistic > 1e6
    assert result.pvalue is not None
    assert 0.0 <= result.pvalue < 1e-9


def test_paired_t_test_refuses_a_bad_confidence():
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        paired_t_test([1, 2, 3], [0, 0, 0], confidence=95)


def test_paired_t_test_refuses_non_finite_inputs():
    with pytest.raises(ValueError, match="treated and control must be finite"):
        paired_t_test([1.0, float("nan")], [0.0, 0.0])


# --- bootstrap CI ------------------------------------------------------------------------------


def test_bootstrap_ci_is_deterministic_for_a_seed():
    d = np.subtract(*_paired_sample(3, 12)).tolist()
    assert bootstrap_ci(d, seed=42) == bootstrap_ci(d, seed=42)
    assert bootstrap_ci(d, seed=42) != bootstrap_ci(d, seed=43)


@pytest.mark.parametrize(("seed", "n"), [(s, n) for s in (0, 1, 2) for n in (2, 7, 15, 40)])
def test_bootstrap_ci_brackets_the_mean_and_lies_within_the_data(seed, n):
    d = np.subtract(*_paired_sample(seed, n))
    lo, hi = bootstrap_ci(d.tolist(), seed=seed)
    assert d.min() <= lo <= d.mean() <= hi <= d.max()


def test_bootstrap_ci_widens_with_the_confidence_level():
    d = np.subtract(*_paired_sample(5, 10)).tolist()
    lo90, hi90 = bootstrap_ci(d, confidence=0.90)
    lo99, hi99 = bootstrap_ci(d, confidence=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_bootstrap_ci_is_close_to_the_t_interval_for_a_normal_sample():
    treated, control = _paired_sample(11, 40)
    lo, hi = bootstrap_ci(np.subtract(treated, control).tolist(), n_resamples=20_000)
    t_lo, t_hi = paired_t_test(treated, control).ci95
    width = t_hi - t_lo
    assert abs(lo - t_lo) < 0.1 * width
    assert abs(hi - t_hi) < 0.1 * width


@pytest.mark.filterwarnings("error")
def test_bootstrap_ci_degenerate_cases():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([3.0]) is None
    assert bootstrap_ci([2.5, 2.5, 2.5]) == pytest.approx((2.5, 2.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 1.0}, "confidence must be in"),
        ({"n_resamples": 0}, "n_resamples must be a positive integer, got 0"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bootstrap_ci_refuses_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bootstrap_ci([1.0, 2.0, 3.0], **kwargs)


def test_bootstrap_ci_refuses_non_finite_diffs():
    with pytest.raises(ValueError, match="diffs must be"):
        bootstrap_ci([1.0, float("inf")])


# --- Wilcoxon signed-rank ----------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("seed", "n"), [(s, n) for s in (0, 1, 2) for n in (1, 5, 7, 15, 50)])
def test_wilcoxon_without_ties_is_scipys_exact_test(seed, n):
    treated, control = _paired_sample(seed, n)
    ours = wilcoxon_signed_rank(treated, control)
    ref = scipy_stats.wilcoxon(treated, control, method="exact")
    assert ours.method == "exact"
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_wilcoxon_above_50_pairs_is_scipys_asymptotic_test(seed):
    treated, control = _paired_sample(seed, 80)
    ours = wilcoxon_signed_rank(treated, control)
    ref = scipy_stats.wilcoxon(treated, control)  # scipy's "auto" also goes asymptotic > 50
    assert ours.method == "asymptotic"
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-9)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("seed", "n"), [(s, n) for s in range(6) for n in (6, 9)])
def test_wilcoxon_with_ties_and_zeros_is_scipys_exhaustive_permutation_test(seed, n):
    treated, control = _paired_sample(seed, n, integers=True)
    d = np.subtract(treated, control)
    ours = wilcoxon_signed_rank(treated, control)
    if not np.any(d):
        pytest.skip("all differences zero: covered by the degenerate-case test")
    ref = scipy_stats.wilcoxon(d, method=scipy_stats.PermutationMethod(n_resamples=2**n))
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-9)
    nonzero = d[d != 0]
    tied = len(np.unique(np.abs(nonzero))) < len(nonzero)
    assert ours.method == ("exact (tied ranks)" if tied else "exact")
    if np.any(d == 0):
        assert f"{int(np.sum(d == 0))} zero difference(s) dropped" in ours.note


def test_wilcoxon_with_ties_above_50_pairs_is_scipys_asymptotic_test():
    treated, control = _paired_sample(4, 70, integers=True)
    ours = wilcoxon_signed_rank(treated, control)
    ref = scipy_stats.wilcoxon(np.subtract(treated, control), method="asymptotic")
    assert ours.method == "asymptotic"
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_exact_tied_count_reduces_to_the_signed_rank_table_without_ties(seed):
    d = np.random.default_rng(seed).normal(1.0, 2.0, size=12)
    ref = scipy_stats.wilcoxon(d, method="exact")
    assert _exact_tied_pvalue(d) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)


def test_wilcoxon_treats_round_off_as_ties_and_zeros():
    # gains of 34.8 written two ways (81.0 - 46.2, 80.9 - 46.1) are one tie; 0.3 - (0.1 + 0.2)
    # is no change. scipy on the raw floats would see three distinct nonzero differences.
    treated = [81.0, 80.9, 0.3, 50.0, 62.0, 70.0]
    control = [46.2, 46.1, 0.1 + 0.2, 40.0, 50.0, 49.0]
    result = wilcoxon_signed_rank(treated, control)
    clean = scipy_stats.wilcoxon(
        [34.8, 34.8, 10.0, 12.0, 21.0], method=scipy_stats.PermutationMethod(n_resamples=2**5)
    )
    assert result.method == "exact (tied ranks)"
    assert "1 zero difference(s) dropped" in result.note
    assert result.pvalue == pytest.approx(clean.pvalue, rel=1e-12)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("treated", "control", "statistic", "pvalue", "note"),
    [
        ([], [], None, None, "no pairs"),
        ([3.0, 3.0, 3.0], [3.0, 3.0, 3.0], 0.0, 1.0, "all differences are zero"),
        ([5.0], [3.0], 0.0, 1.0, "the smallest attainable p is 1"),
        ([5.0, 6.0, 7.0, 8.0, 9.0], [0.0] * 5, 0.0, 0.0625, "smallest attainable p is 0.0625"),
    ],
)
def test_wilcoxon_degenerate_cases_are_stated(treated, control, statistic, pvalue, note):
    result = wilcoxon_signed_rank(treated, control)
    assert result.statistic == statistic
    assert result.pvalue == pvalue
    assert note in result.note


# --- probability of improvement ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("treated", "control", "expected"),
    [
        ([3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 4.0], 0.5),  # a tie is not an improvement
        ([0.3, 0.9], [0.1 + 0.2, 0.5], 0.5),  # 0.3 - (0.1 + 0.2) is round-off, not a gain
        ([5.0], [3.0], 1.0),
        ([], [], None),
    ],
)
def test_prob_improvement(treated, control, expected):
    assert prob_improvement(treated, control) == expected


@pytest.mark.parametrize(("seed", "n"), SAMPLES)
def test_prob_improvement_is_the_share_of_positive_differences(seed, n):
    treated, control = _paired_sample(seed, n)
    assert prob_improvement(treated, control) == np.mean(np.subtract(treated, control) > 0)


# --- Holm-Bonferroni ---------------------------------------------------------------------------


def _holm_by_closed_testing(pvalues: list[float]) -> list[float]:
    """Holm by its definition as closed testing of Bonferroni tests (Holm 1979): H_i is
    rejected at level a iff every intersection containing i is, so the adjusted p of H_i is
    the largest Bonferroni p, min(1, |S| min_S p), over all index sets S containing i."""
    m = len(pvalues)
    return [
        max(
            min(1.0, len(s) * min(pvalues[j] for j in s))
            for size in range(1, m + 1)
            for s in itertools.combinations(range(m), size)
            if i in s
        )
        for i in range(m)
    ]


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize(
    ("pvalues", "expected"),
    [  # statsmodels 0.15.0: multipletests(pvalues, method="holm")[1]
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        (
            [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216],
            [0.01, 0.072, 0.312, 0.312, 0.312, 0.312, 0.312, 0.615, 0.615, 0.615],
        ),
        ([0.2, 0.2, 0.01, 0.5, 0.02], [0.6, 0.6, 0.05, 0.6, 0.08]),
    ],
)
def test_holm_matches_statsmodels(pvalues, expected):
    assert holm_bonferroni(pvalues) == pytest.approx(expected, rel=1e-12)


def test_holm_passes_none_through_and_leaves_it_out_of_the_family():
    assert holm_bonferroni([0.01, None, 0.04, None, 0.03, 0.005]) == pytest.approx(
        [0.03, None, 0.06, None, 0.06, 0.02]
    )
    assert holm_bonferroni([None, None]) == [None, None]
    assert holm_bonferroni([]) == []
    assert holm_bonferroni([0.2]) == [0.2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=7))
def test_holm_properties_and_closed_testing_definition(pvalues):
    adjusted = holm_bonferroni(pvalues)
    assert [a is None for a in adjusted] == [p is None for p in pvalues]
    defined = [p for p in pvalues if p is not None]
    got = [a for a in adjusted if a is not None]
    assert got == pytest.approx(_holm_by_closed_testing(defined), rel=1e-12, abs=1e-15)
    for p, a in zip(defined, got, strict=True):
        assert p <= a <= 1.0
    in_raw_order = [a for _, a in sorted(zip(defined, got, strict=True))]
    assert in_raw_order == sorted(in_raw_order)  # monotone in the order of the raw p-values


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5, "0.1"])
def test_holm_refuses_values_that_are_not_p_values(bad):
    with pytest.raises((ValueError, TypeError), match=r"pvalues\[1\] must be"):
        holm_bonferroni([0.1, bad])


# --- few-shot label saving (report §5.2) -------------------------------------------------------


def test_label_saving_on_the_reports_own_numbers():
    result = label_saving([2, 3, 5], [26.3, 33.5, 45.4], 44.6)
    # 3 + (44.6 - 33.5) / (45.4 - 33.5) * 2 = 4.8655; 1 - 2 / 4.8655 = 58.9 %, not "60 %"
    assert result.reached is True
    assert result.k_equivalent == pytest.approx(3 + 11.1 / 11.9 * 2, rel=1e-12)
    assert round(result.k_equivalent, 2) == 4.87
    assert result.saving_percent == pytest.approx(100 * (1 - 2 / (3 + 11.1 / 11.9 * 2)))
    assert round(result.saving_percent, 1) == 58.9
    assert "between k = 3 (33.5) and k = 5 (45.4)" in result.note


def test_label_saving_not_reached_does_not_extrapolate():
    result = label_saving([2, 3, 5], [26.3, 33.5, 40.0], 44.6)
    assert result.reached is False
    assert result.k_equivalent is None
    assert result.saving_percent is None
    assert result.note.startswith("not reached")
    assert "more than k = 5" in result.note


def test_label_saving_takes_the_first_crossing_of_a_non_monotone_curve():
    # crosses 40 between k = 2 and 3, falls back below at k = 4, crosses again before 5
    result = label_saving([1, 2, 3, 4, 5], [20.0, 30.0, 50.0, 35.0, 60.0], 40.0)
    assert result.k_equivalent == pytest.approx(2.5)
    assert result.saving_percent == pytest.approx(60.0)


def test_label_saving_at_a_measured_k_is_that_k():
    result = label_saving([2, 3, 5], [26.3, 33.5, 45.4], 33.5)
    assert result.k_equivalent == pytest.approx(3.0)
    assert result.saving_percent == pytest.approx(100 / 3)


@pytest.mark.parametrize("synthetic", [20.0, 26.3])
def test_label_saving_is_zero_when_real_only_already_matches_at_the_smallest_k(synthetic):
    result = label_saving([2, 3, 5], [26.3, 33.5, 45.4], synthetic)
    assert result.reached is True
    assert result.k_equivalent == 2.0
    assert result.saving_percent == 0.0
    assert "no label saving" in result.note


@pytest.mark.parametrize(
    ("ks", "curve", "message"),
    [
        ([2, 5, 3], [1.0, 2.0, 3.0], "ks must be positive and strictly increasing"),
        ([0, 2, 3], [1.0, 2.0, 3.0], "ks must be positive"),
        ([], [], "ks must be a non-empty list"),
        ([2, 3, 5], [1.0, 2.0], "real_curve must have one accuracy per k: 3 ks, got 2"),
        ([2, 3], [1.0, float("nan")], "real_curve must be finite"),
    ],
)
def test_label_saving_refuses_bad_curves(ks, curve, message):
    with pytest.raises(ValueError, match=message):
        label_saving(ks, curve, 10.0)


# --- verdict -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((5.6, 0.001, 4.0, 0.004), "holds vs real and vs placebo (|z| ≥ 3.4, Holm p < 0.05)"),
        ((3.4, 0.01, 3.4, 0.049), "holds vs real and vs placebo (|z| ≥ 3.4, Holm p < 0.05)"),
        ((5.6, 0.001, 1.2, 0.31), "holds vs real only; not vs placebo (z = 1.2, Holm p = 0.31)"),
        ((5.6, 0.001, 4.0, 0.05), "holds vs real only; not vs placebo (z = 4.0, Holm p = 0.05)"),
        (
            (5.6, 0.001, -4.0, 0.001),
            "holds vs real only; harms vs placebo (z = -4.0, Holm p = 0.001)",
        ),
        (
            (5.6, 0.001, None, None),
            "holds vs real (|z| ≥ 3.4, Holm p < 0.05); vs placebo undefined (z and Holm p missing)",
        ),
        ((1.2, 0.31, 4.0, 0.001), "no gain vs real (z = 1.2, Holm p = 0.31)"),
        ((3.39, 0.001, 4.0, 0.001), "no gain vs real (z = 3.4, Holm p = 0.001)"),
        ((5.0, 0.2, 4.0, 0.001), "no gain vs real (z = 5.0, Holm p = 0.2)"),
        ((-5.1, 0.0002, None, None), "harms vs real (z = -5.1, Holm p = 0.0002)"),
        ((None, None, 4.0, 0.001), "undefined (vs real: z and Holm p missing)"),
        ((4.0, None, 4.0, 0.001), "undefined (vs real: Holm p missing)"),
    ],
)
def test_verdict_sentences(args, expected):
    assert verdict(*args) == expected


def test_verdict_states_the_thresholds_it_was_given():
    assert verdict(2.5, 0.001, 2.1, 0.009, min_abs_z=2.0, alpha=0.01) == (
        "holds vs real and vs placebo (|z| ≥ 2, Holm p < 0.01)"
    )
    assert verdict(2.5, 0.001, 2.1, 0.009, min_abs_z=3.4, alpha=0.01).startswith("no gain")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha in \\(0, 1\\)"),
        ({"min_abs_z": -1.0}, "min_abs_z must be"),
        ({"holm_p_vs_real": 1.5}, "holm_p_vs_real must be"),
        ({"z": float("nan")}, "z must be"),
    ],
)
def test_verdict_refuses_bad_arguments(kwargs, message):
    args = {"z": 5.0, "holm_p_vs_real": 0.01, "z_vs_placebo": 4.0, "holm_p_vs_placebo": 0.01}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        verdict(**args)


def test_verdict_without_a_placebo_judges_vs_real_only():
    from scarce.trainer.stats import verdict

    assert verdict(5.0, 0.001, None, None, placebo_applies=False) == (
        "holds vs real (|z| ≥ 3.4, Holm p < 0.05)"
    )
    assert verdict(1.0, 0.4, None, None, placebo_applies=False).startswith("no gain vs real")
