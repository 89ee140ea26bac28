"""Paired z of report eq. (1) on hand-computed values, and its degenerate cases."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from scarce.trainer.stats import paired_z


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
