"""The negative binomial tail against brute-force sums, and why Poisson tails are not used."""

from __future__ import annotations

import itertools
import math

import pytest

from tasks.anomaly.distributions import NegativeBinomial, betainc, poisson_sf


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (1.0, 1.0, 0.3, 0.3),  # uniform
        (2.0, 3.0, 0.4, 0.5248),  # polynomial closed form
        (0.5, 0.5, 0.5, 0.5),  # symmetric
    ],
)
def test_betainc_known_values(a: float, b: float, x: float, expected: float) -> None:
    assert betainc(a, b, x) == pytest.approx(expected, abs=1e-4)


def test_betainc_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a > 0"):
        betainc(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="0 <= x"):
        betainc(1.0, 1.0, 1.5)


@pytest.mark.parametrize(("shape", "mean"), [(0.3, 0.05), (1.0, 2.0), (5.0, 12.5), (20.0, 0.7)])
def test_nb_sf_matches_pmf_sum(shape: float, mean: float) -> None:
    nb = NegativeBinomial(shape=shape, mean=mean)
    assert sum(nb.pmf(k) for k in range(2000)) == pytest.approx(1.0, abs=1e-9)
    for k in (1, 2, 5, 10, 30):
        brute = 1.0 - sum(nb.pmf(i) for i in range(k))
        assert nb.sf(k) == pytest.approx(brute, rel=1e-6, abs=1e-12)


def test_nb_sf_deep_tail_is_accurate_and_monotone() -> None:
    nb = NegativeBinomial(shape=0.5, mean=0.1)
    tail = [nb.sf(k) for k in range(1, 200)]
    assert all(a > b for a, b in itertools.pairwise(tail))
    # Deep in the tail the sf is dominated by its first term; no cancellation to zero.
    assert nb.sf(60) == pytest.approx(sum(nb.pmf(k) for k in range(60, 400)), rel=1e-6)
    assert 0 < nb.sf(150) < 1e-50


def test_nb_tends_to_poisson_and_poisson_is_overconfident() -> None:
    assert NegativeBinomial(shape=1e7, mean=3.0).sf(8) == pytest.approx(poisson_sf(8, 3.0), rel=1e-4)
    # 10 logins in 10 minutes for a user averaging 0.5: Poisson says impossible, NB says rare.
    overdispersed = NegativeBinomial(shape=0.5, mean=0.5).sf(10)
    assert poisson_sf(10, 0.5) < overdispersed / 1000


def test_degenerate_cases() -> None:
    assert NegativeBinomial(shape=1.0, mean=0.0).sf(1) == 0.0
    assert NegativeBinomial(shape=1.0, mean=2.0).sf(0) == 1.0
    assert poisson_sf(0, 1.0) == 1.0
    assert poisson_sf(3, 0.0) == 0.0
    assert math.isclose(NegativeBinomial(shape=2.0, mean=4.0).variance, 12.0)
    with pytest.raises(ValueError, match="shape > 0"):
        NegativeBinomial(shape=0.0, mean=1.0)
