"""Paired statistics across seeds (report §3.6), written like scipy.stats: arrays in, named
results out, degenerate cases stated rather than turned into NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
