"""Tail probabilities of the count models the detectors use (pure Python: no SciPy dependency).

The per-user detector models a user's session count in a window as Gamma-Poisson, i.e. negative
binomial: the user's rate is uncertain (Gamma), and counts given the rate are Poisson. Plain
Poisson tails are wildly overconfident on real per-user counts (logins come in clusters), so the
survival function here is the negative binomial one, computed through the regularized incomplete
beta function with a continued fraction that stays accurate deep in the tail (p-values of 1e-30
are still meaningful for ranking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: relative accuracy the continued fraction stops at
_EPS = 1e-15
#: smallest magnitude the Lentz algorithm substitutes for zero, to avoid dividing by it
_TINY = 1e-300
#: iterations after which the continued fraction is considered converged enough
_MAX_ITER = 10_000


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("betainc needs a > 0 and b > 0")
    if not 0.0 <= x <= 1.0:
        raise ValueError("betainc needs 0 <= x <= 1")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only on the side of the mean; use the symmetry on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


@dataclass(frozen=True, slots=True)
class NegativeBinomial:
    """Gamma-Poisson count: rate ~ Gamma(shape, rate), count | rate ~ Poisson(rate * exposure).

    ``shape`` is the Gamma shape (smaller means heavier tails), ``mean`` the expected count.
    Variance is ``mean + mean**2 / shape``; as shape grows it tends to Poisson(mean).
    """

    shape: float
    mean: float

    def __post_init__(self) -> None:
        if self.shape <= 0 or self.mean < 0:
            raise ValueError("NegativeBinomial needs shape > 0 and mean >= 0")

    @property
    def variance(self) -> float:
        return self.mean + self.mean * self.mean / self.shape

    def sf(self, k: int) -> float:
        """P(X >= k): the one-sided p-value of observing k or more."""
        if k <= 0:
            return 1.0
        if self.mean == 0:
            return 0.0
        # With p = shape / (shape + mean), P(X >= k) = I_{1-p}(k, shape).
        q = self.mean / (self.shape + self.mean)
        return min(1.0, max(0.0, betainc(float(k), self.shape, q)))

    def pmf(self, k: int) -> float:
        """P(X = k)."""
        if k < 0:
            return 0.0
        if self.mean == 0:
            return 1.0 if k == 0 else 0.0
        r, m = self.shape, self.mean
        log_p = (
            math.lgamma(k + r)
            - math.lgamma(r)
            - math.lgamma(k + 1)
            + r * math.log(r / (r + m))
            + k * math.log(m / (r + m))
        )
        return math.exp(log_p)


def poisson_sf(k: int, mean: float) -> float:
    """P(X >= k) for Poisson(mean), via the regularized gamma identity with betainc's limit.

    Only used to show, in tests and docs, how overconfident the Poisson tail is next to the
    negative binomial one; the detectors never use it.
    """
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    # P(X >= k) = P(Gamma(k, 1) <= mean); computed as the sum of the complementary pmf terms
    # from k upward, which converge fast once past the mode and never cancel.
    log_term = k * math.log(mean) - mean - math.lgamma(k + 1)
    total = 0.0
    term = math.exp(log_term)
    i = k
    while term > total * 1e-17 and i < k + 100_000:
        total += term
        i += 1
        term *= mean / i
    return min(1.0, total)
