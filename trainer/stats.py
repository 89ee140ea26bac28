"""Paired statistics across seeds (report §3.6), written like scipy.stats: arrays in, named
results out, degenerate cases stated rather than turned into NaN.

`paired_z` is report eq. (1); `paired_t_test` adds its p-value (n - 1 df) and t-based CI;
`bootstrap_ci`, `wilcoxon_signed_rank` and `prob_improvement` are its companions that assume
no normality; `holm_bonferroni` adjusts the p-values of a whole benchmark; `label_saving` is the
few-shot saving of report §5.2; `verdict` puts z and Holm p into one sentence per arm.
Every function is pure (no I/O) and checked against scipy in tests/test_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedZResult:
    """Result of `paired_z`.

    Attributes
    ----------
    z : float or None
        The paired standardized difference; None when it is undefined (see `note`).
    mean_diff : float or None
        Mean of the per-seed differences (treated minus control), in the inputs' unit.
    sd_diff : float or None
        Sample standard deviation of the differences (ddof = 1).
    n : int
        Number of pairs.
    note : str or None
        Why `z` is undefined, or None.
    """

    z: float | None
    mean_diff: float | None
    sd_diff: float | None
    n: int
    note: str | None = None


def _as_pairs(treated: Sequence[float], control: Sequence[float]) -> np.ndarray:
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError("treated and control must be one-dimensional")
    if a.shape != b.shape:
        raise ValueError(
            f"treated and control must have the same length (paired by seed), got {len(a)} "
            f"and {len(b)}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("treated and control must be finite numbers")
    return a - b


def paired_z(treated: Sequence[float], control: Sequence[float]) -> PairedZResult:
    r"""Paired standardized difference of report eq. (1).

    .. math:: z = \frac{\bar d}{s_d / \sqrt{n}}, \qquad d_s = \text{treated}_s - \text{control}_s

    with :math:`\bar d` the mean and :math:`s_d` the sample standard deviation (ddof = 1) of
    the per-seed differences. This is exactly the paired t statistic with n - 1 degrees of
    freedom. Inputs are paired by position (seed s in both).

    Degenerate cases are explicit: with fewer than 2 pairs, or when every difference is the
    same (s_d = 0), `z` is None and `note` says why.

    Examples
    --------
    >>> paired_z([3.0, 5.0, 4.0], [1.0, 2.0, 2.0]).z  # d = 2, 3, 2
    7.0
    """
    d = _as_pairs(treated, control)
    n = len(d)
    if n == 0:
        return PairedZResult(None, None, None, 0, "no pairs")
    mean = float(d.mean())
    if n < 2:
        return PairedZResult(None, mean, None, n, "fewer than 2 pairs: z is undefined")
    sd = float(d.std(ddof=1))
    if sd == 0.0 or math.isclose(sd, 0.0, abs_tol=1e-12 * max(1.0, abs(mean))):
        return PairedZResult(
            None, mean, 0.0, n, "all differences are equal (zero variance): z is undefined"
        )
    return PairedZResult(mean / (sd / math.sqrt(n)), mean, sd, n)


# --- input validation ---------------------------------------------------------------------


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise TypeError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_optional(name: str, value: float | None, low: float, high: float) -> float | None:
    """None passes; anything else must be a finite number in [low, high]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(
            f"{name} must be a finite number in [{low:g}, {high:g}] or None, got {value!r}"
        )
    return float(value)


def _snapped_differences(treated: Sequence[float], control: Sequence[float]) -> np.ndarray:
    """Per-seed differences with round-off removed, for the rank- and sign-based statistics.

    ``81.0 - 46.2`` and ``80.9 - 46.1`` differ in the last bits although they are the same
    gain, and ``0.3 - 0.1 - 0.2`` is not 0; ranks and signs would turn such noise into
    spurious distinct values (scipy's `wilcoxon` docs warn about exactly this). Rounding to
    1e-12 of the inputs' magnitude makes equal gains exact ties and no-change exact zeros,
    while leaving any real difference alone.
    """
    d = _as_pairs(treated, control)
    if len(d) == 0:
        return d
    scale = max(1.0, float(np.max(np.abs(treated))), float(np.max(np.abs(control))))
    quantum = 1e-12 * scale
    return np.round(d / quantum) * quantum + 0.0  # + 0.0 turns -0.0 into 0.0


# --- paired t-test, bootstrap, probability of improvement -----------------------------------


@dataclass(frozen=True)
class PairedTResult:
    """Result of `paired_t_test`.

    Attributes
    ----------
    statistic : float or None
        The paired t statistic, identical to `paired_z` (report eq. (1)); None when undefined.
    pvalue : float or None
        Two-sided p-value from Student's t with `df` degrees of freedom; None when undefined.
    df : int or None
        Degrees of freedom, n - 1; None with fewer than 2 pairs.
    mean_diff : float or None
        Mean of the per-seed differences (treated minus control); None without pairs.
    ci95 : tuple of float or None
        t-based confidence interval of the mean difference at level `confidence` (0.95
        unless asked otherwise; the name follows report.json's ``ci95``). ``(mean, mean)``
        when every difference is equal; None with fewer than 2 pairs.
    note : str or None
        Why something is undefined, or None.
    n : int
        Number of pairs.
    confidence : float
        The confidence level of `ci95`.
    """

    statistic: float | None
    pvalue: float | None
    df: int | None
    mean_diff: float | None
    ci95: tuple[float, float] | None
    note: str | None
    n: int
    confidence: float


def paired_t_test(
    treated: Sequence[float], control: Sequence[float], *, confidence: float = 0.95
) -> PairedTResult:
    r"""Two-sided paired t-test of the per-seed differences, with a t-based CI of their mean.

    .. math::

        t = \frac{\bar d}{s_d / \sqrt{n}}, \qquad
        p = 2\,P(T_{n-1} \ge |t|), \qquad
        \bar d \pm t_{(1+c)/2,\,n-1}\, \frac{s_d}{\sqrt n}

    with :math:`d_s = \text{treated}_s - \text{control}_s` paired by position (seed),
    :math:`s_d` the sample standard deviation (ddof = 1) and :math:`c` = `confidence`.
    The statistic is exactly the paired z of report eq. (1) (it is computed by `paired_z`);
    the report calls it z and reads it descriptively, this function adds the p-value and CI
    it implies. Same numbers as ``scipy.stats.ttest_rel(treated, control)`` and its
    ``confidence_interval(confidence)``.

    Assumes the differences are independent across seeds and roughly normal; with 7 to 15
    seeds normality cannot be checked, so read `wilcoxon_signed_rank` alongside.

    Degenerate cases are stated, never NaN:

    * no pairs, or one pair: `statistic`, `pvalue` and `ci95` are None (`mean_diff` is the
      single difference with one pair);
    * every difference equal (zero variance): `statistic` and `pvalue` are None and `ci95`
      is ``(mean, mean)``. The t statistic would be infinite (or 0/0); a p-value of 0 would
      claim certainty from what is usually the coarse granularity of accuracy on a small
      test split, so no p-value is given and the note says "zero variance".

    References
    ----------
    Student (1908), "The probable error of a mean", Biometrika 6(1):1-25.
    SCARCE report §3.6, eq. (1).

    Examples
    --------
    >>> r = paired_t_test([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])  # d = 2, 3, 2
    >>> r.statistic, r.df, round(r.pvalue, 6)
    (7.0, 2, 0.019804)
    """
    level = _check_confidence(confidence)
    z = paired_z(treated, control)
    if z.n < 2:
        note = "no pairs" if z.n == 0 else "fewer than 2 pairs: t, p and CI are undefined"
        return PairedTResult(None, None, None, z.mean_diff, None, note, z.n, level)
    df = z.n - 1
    if z.z is None:  # zero variance: paired_z decided, with its round-off tolerance
        note = "all differences are equal (zero variance): t and p are undefined"
        ci = (z.mean_diff, z.mean_diff)
        return PairedTResult(None, None, df, z.mean_diff, ci, note, z.n, level)
    pvalue = float(2.0 * stats.t.sf(abs(z.z), df))
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * z.sd_diff / math.sqrt(z.n)
    ci = (z.mean_diff - half, z.mean_diff + half)
    return PairedTResult(z.z, pvalue, df, z.mean_diff, ci, None, z.n, level)


def bootstrap_ci(
    diffs: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    r"""Seeded percentile-bootstrap confidence interval of the mean difference.

    Draws `n_resamples` resamples of the n differences with replacement from
    ``numpy.random.default_rng(seed)``, takes each resample's mean, and returns the
    :math:`(1-c)/2` and :math:`(1+c)/2` quantiles (linear interpolation) of those means,
    :math:`c` = `confidence`. The same inputs and seed always give the same interval.

    Makes no normality assumption, but with 7 to 15 seeds the percentile interval is known to
    be too narrow (it ignores that s_d is estimated); it is a companion to the t interval of
    `paired_t_test`, not a replacement. Returns None with fewer than 2 differences; with all
    differences equal the interval is that value twice.

    References
    ----------
    Efron, B. and Tibshirani, R. J. (1993), *An Introduction to the Bootstrap*, ch. 13.

    Examples
    --------
    >>> lo, hi = bootstrap_ci([2.0, 3.0, 2.0, 5.0, 4.0], seed=0)
    >>> bool(lo <= 3.2 <= hi)
    True
    """
    level = _check_confidence(confidence)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise ValueError("diffs must be a one-dimensional sequence of finite numbers")
    n = len(d)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    # Batches bound the index matrix at ~1e6 entries, whatever n is.
    batch = max(1, 1_000_000 // n)
    means = np.concatenate(
        [
            d[rng.integers(0, n, size=(min(batch, n_resamples - start), n))].mean(axis=1)
            for start in range(0, n_resamples, batch)
        ]
    )
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def prob_improvement(treated: Sequence[float], control: Sequence[float]) -> float | None:
    """Probability of improvement: the share of seeds on which treated beats control.

    .. math:: \\hat P = \\frac{1}{n} \\sum_s [d_s > 0]

    A tie (d = 0, up to round-off) does not count as an improvement. None without pairs.

    Examples
    --------
    >>> prob_improvement([3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 4.0])
    0.5
    """
    d = _snapped_differences(treated, control)
    return None if len(d) == 0 else float(np.mean(d > 0))


# --- Wilcoxon signed-rank -------------------------------------------------------------------

# Exact null distributions are used up to this many nonzero differences (scipy's own
# threshold for method="auto"); the report's 7 to 15 seeds are well inside.
_EXACT_MAX_N = 50


@dataclass(frozen=True)
class WilcoxonResult:
    """Result of `wilcoxon_signed_rank`.

    Attributes
    ----------
    statistic : float or None
        min(R+, R-), the smaller of the signed-rank sums over the nonzero differences (what
        ``scipy.stats.wilcoxon`` reports for a two-sided test); None without pairs.
    pvalue : float or None
        Two-sided p-value; None without pairs, 1.0 when every difference is zero.
    method : str
        ``"exact"``, ``"exact (tied ranks)"``, ``"asymptotic"`` or ``"none"``.
    note : str or None
        Zeros dropped, ties, small-sample limits or degenerate cases, in words.
    """

    statistic: float | None
    pvalue: float | None
    method: str
    note: str | None = None


def _exact_tied_pvalue(d: np.ndarray) -> tuple[float, float]:
    """Exact two-sided signed-rank p for nonzero `d` with tied |d| (midranks).

    Under H0 every sign pattern of the n midranks is equally likely, so the null
    distribution of R+ is the convolution of n two-point distributions {0, r_i}: counted
    here exactly, on doubled (integer) midranks, by the shift algorithm of Streitberg and
    Röhmel (1986). This equals scipy's exhaustive `permutation_test` over all 2**n sign
    flips, without enumerating them.
    """
    twice = np.rint(2.0 * stats.rankdata(np.abs(d))).astype(np.int64)
    counts = np.zeros(int(twice.sum()) + 1, dtype=np.int64)  # C(50, 25) < 2**63
    counts[0] = 1
    for r in twice:
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r]
        counts = counts + shifted
    observed = int(twice[d > 0].sum())
    tail = min(int(counts[: observed + 1].sum()), int(counts[observed:].sum()))
    statistic = min(observed, int(twice.sum()) - observed) / 2.0
    return statistic, min(1.0, 2.0 * tail / 2.0 ** len(d))


def wilcoxon_signed_rank(treated: Sequence[float], control: Sequence[float]) -> WilcoxonResult:
    r"""Two-sided Wilcoxon signed-rank test of the per-seed differences.

    Ranks :math:`|d_s|` (midranks for ties), sums the ranks of the positive differences
    (:math:`R^+`) and of the negative ones (:math:`R^-`), and tests whether the differences
    are symmetric about zero. Assumes independent seeds and a symmetric distribution of
    differences, but not normality: the companion of `paired_t_test` for 7 to 15 seeds.

    Rule for the p-value (differences are first rounded to 1e-12 of the inputs' magnitude, so
    that float round-off makes no spurious ties or zeros):

    * zero differences are dropped (``zero_method="wilcox"``, scipy's default, Wilcoxon
      1945); given the zeros, the remaining m differences have the exact signed-rank null
      distribution, so dropping them keeps the test exact. The note says how many.
    * m <= 50 and no tied |d|: ``scipy.stats.wilcoxon(d, method="exact")``; method "exact".
    * m <= 50 with tied |d|: scipy's "exact" would not be exact (its table assumes ranks
      1..m), so the exact permutation distribution of R+ over the midranks is counted
      instead (`_exact_tied_pvalue`); method "exact (tied ranks)". Equals scipy's
      ``wilcoxon(d, method=PermutationMethod(n_resamples=2**m))``.
    * m > 50: ``scipy.stats.wilcoxon(d, method="asymptotic")`` (normal approximation with the
      tie correction, no continuity correction); method "asymptotic".
    * no pairs: statistic and p-value None, method "none".
    * every difference zero: statistic 0.0 and p-value 1.0, method "none". Every sign
      assignment of zeros gives the same statistic, so the observed one is as extreme as all
      of them: the permutation p-value is 1, i.e. no evidence of any difference.

    With m nonzero differences the smallest attainable two-sided p is 2 / 2**m (0.0625 for
    m = 5), so m < 6 can never reach p < 0.05; the note says so.

    References
    ----------
    Wilcoxon, F. (1945), "Individual comparisons by ranking methods", Biometrics Bulletin
    1(6):80-83. Streitberg, B. and Röhmel, J. (1986), "Exact distributions for permutation
    and rank tests", Statistical Software Newsletter 12(1):10-17.

    Examples
    --------
    >>> r = wilcoxon_signed_rank([5.0, 7.0, 6.0, 10.0, 4.0, 8.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    >>> r.statistic, r.pvalue, r.method
    (1.0, 0.0625, 'exact')
    """
    d = _snapped_differences(treated, control)
    if len(d) == 0:
        return WilcoxonResult(None, None, "none", "no pairs")
    nonzero = d[d != 0.0]
    m = len(nonzero)
    if m == 0:
        note = "all differences are zero: p = 1 by rule (every sign flip gives the same R+)"
        return WilcoxonResult(0.0, 1.0, "none", note)
    notes = []
    if m < len(d):
        notes.append(f"{len(d) - m} zero difference(s) dropped (zero_method='wilcox')")
    tied = len(np.unique(np.abs(nonzero))) < m
    if m > _EXACT_MAX_N:
        method = "asymptotic"
        res = stats.wilcoxon(nonzero, method="asymptotic")
        statistic, pvalue = float(res.statistic), float(res.pvalue)
    elif tied:
        method = "exact (tied ranks)"
        statistic, pvalue = _exact_tied_pvalue(nonzero)
        notes.append("tied |differences|: exact permutation distribution over midranks")
    else:
        method = "exact"
        res = stats.wilcoxon(nonzero, method="exact")
        statistic, pvalue = float(res.statistic), float(res.pvalue)
    if m < 6:
        notes.append(f"{m} nonzero difference(s): the smallest attainable p is {2.0 / 2**m:g}")
    return WilcoxonResult(statistic, pvalue, method, "; ".join(notes) or None)


# --- multiplicity ---------------------------------------------------------------------------


def holm_bonferroni(pvalues: Sequence[float | None]) -> list[float | None]:
    r"""Holm's step-down adjusted p-values, in the input order.

    With the m defined p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math:: \tilde p_{(i)} = \min\Big(1,\ \max_{j \le i}\,(m - j + 1)\, p_{(j)}\Big)

    Rejecting every hypothesis with :math:`\tilde p < \alpha` controls the family-wise error
    rate at :math:`\alpha` under any dependence between the tests (the report's comparisons
    vs real and vs placebo share arms, so they are dependent). The adjusted values are >= the
    raw ones, <= 1 and monotone in the order of the raw ones. None entries (comparisons whose
    p-value is undefined) are passed through as None and are not counted in m. The report
    itself (§3.6) makes no multiple-comparison correction; this adds one.

    References
    ----------
    Holm, S. (1979), "A simple sequentially rejective multiple test procedure", Scandinavian
    Journal of Statistics 6(2):65-70. Same values as statsmodels'
    ``multipletests(p, method="holm")``.

    Examples
    --------
    >>> holm_bonferroni([0.01, None, 0.04, 0.03, 0.005])
    [0.03, None, 0.06, 0.06, 0.02]
    """
    checked = [_check_optional(f"pvalues[{i}]", p, 0.0, 1.0) for i, p in enumerate(pvalues)]
    defined = [(p, i) for i, p in enumerate(checked) if p is not None]
    m = len(defined)
    adjusted: list[float | None] = [None] * len(checked)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(defined)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# --- few-shot label saving (report §5.2) ------------------------------------------------------


@dataclass(frozen=True)
class LabelSavingResult:
    """Result of `label_saving`.

    Attributes
    ----------
    k_equivalent : float or None
        Labels per class the real-only arm needs to match the synthetic arm at the smallest
        k (linear interpolation); None when not reached.
    saving_percent : float or None
        ``100 * (1 - k_min / k_equivalent)``: fewer real labels, in percent; None when not
        reached, 0.0 when real-only already matches at k_min.
    reached : bool
        Whether the real-only curve reaches the synthetic accuracy within the measured ks.
    note : str
        How the number came about, in words ("not reached" when it did not).
    """

    k_equivalent: float | None
    saving_percent: float | None
    reached: bool
    note: str


def _check_curve(ks: Sequence[float], real_curve: Sequence[float], target: float) -> tuple:
    k = np.asarray(ks, dtype=float)
    acc = np.asarray(real_curve, dtype=float)
    if k.ndim != 1 or len(k) == 0:
        raise ValueError(f"ks must be a non-empty list of label counts, got {list(ks)!r}")
    if acc.shape != k.shape:
        raise ValueError(
            f"real_curve must have one accuracy per k: {len(k)} ks, got {len(acc)} accuracies"
        )
    if not (np.all(np.isfinite(k)) and np.all(k > 0) and np.all(np.diff(k) > 0)):
        raise ValueError(f"ks must be positive and strictly increasing, got {list(ks)!r}")
    if not np.all(np.isfinite(acc)):
        raise ValueError(f"real_curve must be finite numbers, got {list(real_curve)!r}")
    if isinstance(target, bool) or not isinstance(target, int | float | np.number):
        raise TypeError(f"synthetic_at_smallest_k must be a number, got {target!r}")
    if not math.isfinite(target):
        raise ValueError(f"synthetic_at_smallest_k must be finite, got {target!r}")
    return k, acc, float(target)


def label_saving(
    ks: Sequence[float], real_curve: Sequence[float], synthetic_at_smallest_k: float
) -> LabelSavingResult:
    r"""Real labels saved by the synthetic arm at the smallest k (report §5.2).

    Finds the labels per class :math:`k^*` at which the real-only curve, linearly
    interpolated between the measured ks, first reaches the synthetic arm's accuracy
    :math:`a` at :math:`k_{\min}`, and the saving :math:`1 - k_{\min}/k^*`:

    .. math::

        k^* = k_i + \frac{a - r_i}{r_{i+1} - r_i}\,(k_{i+1} - k_i), \qquad
        \text{saving} = 100\,\Big(1 - \frac{k_{\min}}{k^*}\Big)\ \%

    where :math:`i` is the first segment with :math:`r_i < a \le r_{i+1}`.

    * First crossing: a non-monotone real curve (noise across k) can cross :math:`a` more
      than once; the smallest :math:`k^*` is taken, the labels that suffice first.
    * No extrapolation: if the real curve stays below :math:`a` at every measured k, the
      result is "not reached" (`reached` False, `k_equivalent` and `saving_percent` None);
      the saving is then only known to exceed :math:`1 - k_{\min}/k_{\max}`, and the note
      says so.
    * If real-only at :math:`k_{\min}` already matches or beats :math:`a`, then
      :math:`k^* = k_{\min}` and the saving is 0: nothing is saved. It is never negative; a
      synthetic arm that hurts shows up in the paired comparison, not here.

    The report's own numbers (k = 2, 3, 5; real 26.3, 33.5, 45.4; synthetic 44.6 at k = 2)
    give :math:`k^* = 3 + 11.1/11.9 \cdot 2 = 4.87` and a saving of 58.9 %, which the report
    rounds to "60 %".

    Examples
    --------
    >>> r = label_saving([2, 3, 5], [26.3, 33.5, 45.4], 44.6)
    >>> round(r.k_equivalent, 2), round(r.saving_percent, 1), r.reached
    (4.87, 58.9, True)
    """
    k, acc, target = _check_curve(ks, real_curve, synthetic_at_smallest_k)
    k_min = float(k[0])
    if acc[0] >= target:
        note = (
            f"real-only at k = {k_min:g} ({acc[0]:g}) already reaches the synthetic arm's "
            f"{target:g}: no label saving"
        )
        return LabelSavingResult(k_min, 0.0, True, note)
    above = np.flatnonzero(acc >= target)
    if len(above) == 0:
        note = (
            f"not reached: real-only peaks at {acc.max():g} within k = {k_min:g}..{k[-1]:g}, "
            f"below the synthetic arm's {target:g} at k = {k_min:g}; no extrapolation: "
            f"real-only would need more than k = {k[-1]:g}, a saving above "
            f"{100.0 * (1.0 - k_min / k[-1]):.1f}%, if it gets there at all"
        )
        return LabelSavingResult(None, None, False, note)
    j = int(above[0])  # first crossing: acc[j - 1] < target <= acc[j]
    frac = (target - acc[j - 1]) / (acc[j] - acc[j - 1])
    k_equivalent = float(k[j - 1] + frac * (k[j] - k[j - 1]))
    note = (
        f"real-only reaches {target:g} between k = {k[j - 1]:g} ({acc[j - 1]:g}) and "
        f"k = {k[j]:g} ({acc[j]:g}), linearly interpolated"
    )
    return LabelSavingResult(k_equivalent, 100.0 * (1.0 - k_min / k_equivalent), True, note)


# --- verdict ----------------------------------------------------------------------------------


def _judge(z: float | None, p: float | None, min_abs_z: float, alpha: float) -> str:
    if z is None or p is None:
        return "undefined"
    if p < alpha and z >= min_abs_z:
        return "holds"
    if p < alpha and z <= -min_abs_z:
        return "harms"
    return "none"


def _evidence(z: float | None, p: float | None) -> str:
    if z is None or p is None:
        missing = " and ".join(name for name, v in (("z", z), ("Holm p", p)) if v is None)
        return f"{missing} missing"
    return f"z = {z:.1f}, Holm p = {p:.2g}"


def verdict(
    z: float | None,
    holm_p_vs_real: float | None,
    z_vs_placebo: float | None,
    holm_p_vs_placebo: float | None,
    *,
    min_abs_z: float = 3.4,
    alpha: float = 0.05,
    placebo_applies: bool = True,
) -> str:
    """One plain sentence on whether a synthetic arm's gain holds, vs real and vs placebo.

    With ``placebo_applies=False`` (the placebo arm itself, or a benchmark without one) the
    sentence judges the comparison with real only.

    A comparison *holds* when the gain is positive and both thresholds are met:
    ``z >= min_abs_z`` (the report's |z| >= 3.4, eq. (1)) and ``Holm p < alpha``. A loss
    meeting both (``z <= -min_abs_z``) *harms*; anything else is *no gain*. Only a holding
    gain vs real is then judged vs placebo. Possible sentences::

        holds vs real and vs placebo (|z| ≥ 3.4, Holm p < 0.05)
        holds vs real only; not vs placebo (z = 1.2, Holm p = 0.31)
        holds vs real only; harms vs placebo (z = -4.0, Holm p = 0.001)
        holds vs real (|z| ≥ 3.4, Holm p < 0.05); vs placebo undefined (z missing)
        no gain vs real (z = 1.2, Holm p = 0.31)
        harms vs real (z = -5.1, Holm p = 0.0002)
        undefined (vs real: z missing)

    z and Holm p may be None (undefined statistics, no placebo arm); they are then reported
    as missing, never guessed.

    Examples
    --------
    >>> verdict(5.6, 0.001, 4.0, 0.004)
    'holds vs real and vs placebo (|z| ≥ 3.4, Holm p < 0.05)'
    """
    min_abs_z = _check_optional("min_abs_z", min_abs_z, 0.0, math.inf)
    alpha = _check_optional("alpha", alpha, 0.0, 1.0)
    if min_abs_z is None or alpha is None or min_abs_z == 0.0 or alpha in (0.0, 1.0):
        raise ValueError(
            f"min_abs_z must be > 0 and alpha in (0, 1), got {min_abs_z!r} and {alpha!r}"
        )
    z = _check_optional("z", z, -math.inf, math.inf)
    z_vs_placebo = _check_optional("z_vs_placebo", z_vs_placebo, -math.inf, math.inf)
    p_real = _check_optional("holm_p_vs_real", holm_p_vs_real, 0.0, 1.0)
    p_placebo = _check_optional("holm_p_vs_placebo", holm_p_vs_placebo, 0.0, 1.0)

    vs_real = _judge(z, p_real, min_abs_z, alpha)
    if vs_real == "undefined":
        return f"undefined (vs real: {_evidence(z, p_real)})"
    if vs_real != "holds":
        label = "harms" if vs_real == "harms" else "no gain"
        return f"{label} vs real ({_evidence(z, p_real)})"
    thresholds = f"|z| ≥ {min_abs_z:g}, Holm p < {alpha:g}"
    if not placebo_applies:
        return f"holds vs real ({thresholds})"
    vs_placebo = _judge(z_vs_placebo, p_placebo, min_abs_z, alpha)
    placebo_evidence = _evidence(z_vs_placebo, p_placebo)
    if vs_placebo == "holds":
        return f"holds vs real and vs placebo ({thresholds})"
    if vs_placebo == "undefined":
        return f"holds vs real ({thresholds}); vs placebo undefined ({placebo_evidence})"
    label = "harms" if vs_placebo == "harms" else "not"
    return f"holds vs real only; {label} vs placebo ({placebo_evidence})"
