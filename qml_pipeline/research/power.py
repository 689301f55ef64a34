"""Minimum detectable effects (MDE) at a given power: how large an effect a FAIL rules out
(docs/evidence.md). Normal approximations, each checked by simulation in tests/research/test_resampling.py.
"""

from __future__ import annotations

import math

from scipy import stats as sps

POWER = 0.80


def _z(q: float) -> float:
    return float(sps.norm.ppf(q))


def mde_from_se(se: float | None, alpha: float = 0.05, power: float = POWER) -> float | None:
    """The smallest true gain a one-sided test at level alpha finds with probability `power` when its
    estimate has standard error `se` (a bootstrap SE): (z_{1-alpha} + z_power) * se. None when the
    SE is 0: the variant never differs from its control on any resample (e.g. the rules changed no
    decision), so no effect of any size could have been seen."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    return (_z(1 - alpha) + _z(power)) * se


def mde_cliffs_delta(n1: int, n2: int, alpha: float = 0.05, n_tests: int = 1, power: float = POWER) -> float | None:
    """|Cliff's delta| a two-sided Mann-Whitney test detects with probability `power` after a
    Benjamini-Hochberg correction over n_tests features.

    BH at level alpha passes a single real effect among n_tests null features only when its raw p is
    below alpha / n_tests (the null features' p-values are then large), so the test is taken at
    two-sided level alpha / n_tests. Noether's normal approximation of the Mann-Whitney statistic:
    U / (n1 n2) has standard deviation sqrt((N + 1) / (12 n1 n2)) near the null, and
    delta = 2 (P(X > Y) - 1/2), so delta = 2 (z_{1-alpha/(2 m)} + z_power) sqrt((N + 1) / (12 n1 n2)).
    """
    if n1 < 1 or n2 < 1:
        return None
    level = alpha / max(1, n_tests)
    return min(1.0, 2 * (_z(1 - level / 2) + _z(power)) * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))


def mde_two_shares(n1: int, n2: int, pooled: float, alpha: float = 0.05, power: float = POWER) -> float | None:
    """Difference of two shares (group 1 minus group 2) that a one-sided test at level alpha (Fisher's
    exact test, alternative 'greater') detects with probability `power`, around the pooled share.

    The normal approximation with a continuity correction (Fleiss): d = z_{1-alpha} sqrt(p q (1/n1 +
    1/n2)) + z_power sqrt(p1 q1 / n1 + p2 q2 / n2) + (1/n1 + 1/n2) / 2, with p1 = p + d n2 / N and
    p2 = p - d n1 / N, solved by iteration. Simulated power of Fisher's test at this d: 0.78..0.88
    over the sizes and shares tested (tests/research/test_resampling.py)."""
    if n1 < 1 or n2 < 1 or not 0 <= pooled <= 1:
        return None
    n = n1 + n2
    null_sd = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    d = 0.0
    for _ in range(100):
        p1, p2 = min(1.0, pooled + d * n2 / n), max(0.0, pooled - d * n1 / n)
        new = (_z(1 - alpha) * null_sd + _z(power) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
               + 0.5 * (1 / n1 + 1 / n2))
        if abs(new - d) < 1e-9:
            break
        d = new
    return min(1.0, d)
