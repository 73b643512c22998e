"""Each detector firing and not firing, with the explanation it gives."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tasks.anomaly import detectors as d

TEN = timedelta(minutes=10)
WEEK = timedelta(days=7)


def population() -> d.GammaPrior:
    # Users log in about once a day on average, heavily skewed.
    counts = [0] * 300 + [1] * 300 + [3] * 200 + [7] * 150 + [20] * 40 + [60] * 10
    return d.fit_gamma_prior(counts, exposure=WEEK)


def test_prior_fit_is_overdispersed_and_bounded() -> None:
    prior = population()
    assert d.PRIOR_SHAPE_MIN <= prior.shape < 1.0
    assert prior.mean_per_minute * 1440 * 7 == pytest.approx(3.35, rel=0.01)
    flat = d.fit_gamma_prior([5] * 100, exposure=WEEK)
    assert flat.shape == d.PRIOR_SHAPE_MAX
    empty = d.fit_gamma_prior([], exposure=WEEK, fallback_per_day=2.0)
    assert empty.mean_per_minute * 1440 == pytest.approx(2.0)


def test_user_burst_fires_for_a_quiet_user() -> None:
    finding = d.detect_user_burst(
        user="u1",
        observed=12,
        window=TEN,
        history_count=3,
        history_exposure=WEEK,
        prior=population(),
    )
    assert finding is not None
    assert finding.rule == "user_burst"
    assert finding.score < 1e-6
    assert finding.expected < 0.1
    assert "12 sessions in 10 min" in finding.reason
    assert finding.to_dict()["window_seconds"] == 600


def test_user_burst_respects_the_floors() -> None:
    prior = population()
    below_floor = d.detect_user_burst(
        user="u1", observed=9, window=TEN, history_count=0, history_exposure=WEEK, prior=prior
    )
    assert below_floor is None
    # A heavy user (about 3 per 10 minutes all week) doing 12: above 10 but under 3x expected.
    heavy = d.detect_user_burst(
        user="bot-ish",
        observed=12,
        window=TEN,
        history_count=3000,
        history_exposure=WEEK,
        prior=prior,
    )
    assert heavy is None


def test_user_burst_absolute_limit_is_critical_whatever_the_history() -> None:
    finding = d.detect_user_burst(
        user="api",
        observed=50,
        window=TEN,
        history_count=60000,
        history_exposure=WEEK,
        prior=population(),
    )
    assert finding is not None
    assert finding.severity == "critical"
    assert "absolute limit" in finding.reason


def test_new_user_is_shrunk_toward_the_population() -> None:
    prior = population()
    # A brand-new user (no exposure) doing 6 on their first day: below the floor anyway,
    # and their expected count is the population's, not zero.
    model = d.user_predictive(history_count=0, history_exposure=timedelta(0), window=TEN, prior=prior)
    assert model.mean == pytest.approx(prior.mean_per_minute * 10)
    quiet = d.user_predictive(history_count=0, history_exposure=WEEK, window=TEN, prior=prior)
    assert quiet.mean < model.mean


def test_ip_spread_thresholds_allowlist_and_usual_load() -> None:
    allow = d.parse_allowlist(["10.0.0.0/8", "2001:db8::/32"])
    assert d.detect_ip_spread(ip="203.0.113.9", distinct_users=4, window=TEN) is None
    warn = d.detect_ip_spread(ip="203.0.113.9", distinct_users=5, window=TEN)
    assert warn is not None
    assert warn.severity == "warning"
    crit = d.detect_ip_spread(ip="203.0.113.9", distinct_users=25, window=TEN)
    assert crit is not None
    assert crit.severity == "critical"
    assert d.detect_ip_spread(ip="10.1.2.3", distinct_users=500, window=TEN, allowlist=allow) is None
    assert d.detect_ip_spread(ip="2001:db8::1", distinct_users=50, window=TEN, allowlist=allow) is None
    # A busy NAT that usually shows 8 users: 12 is normal for it, 30 is not.
    assert (
        d.detect_ip_spread(ip="198.51.100.1", distinct_users=12, window=TEN, usual_distinct_users=8) is None
    )
    assert d.detect_ip_spread(ip="198.51.100.1", distinct_users=30, window=TEN, usual_distinct_users=8)
    assert not d.ip_allowed("not-an-ip", allow)


def test_global_baseline_prefers_seasonal_then_trailing() -> None:
    assert d.choose_baseline(seasonal=[100.0] * 5, trailing=[100.0] * 10) is None
    trailing = d.choose_baseline(seasonal=[100.0] * 5, trailing=[100.0] * 30)
    assert trailing is not None
    assert trailing.method == "trailing_24h_median_mad"
    seasonal = d.choose_baseline(seasonal=[100.0] * 21, trailing=[100.0] * 30)
    assert seasonal is not None
    assert seasonal.method == "seasonal_median_mad"
    # The floor: a flat history never yields a zero scale.
    assert seasonal.scale == pytest.approx(10.0)


def test_global_spike_and_quiet() -> None:
    base = d.robust_baseline(
        [95.0, 100.0, 105.0, 98.0, 102.0, 110.0, 90.0], method="seasonal_median_mad", window=WEEK
    )
    assert d.detect_global(observed=120, baseline=base) is None
    spike = d.detect_global(observed=300, baseline=base)
    assert spike is not None
    assert spike.rule == "global_spike"
    assert spike.severity == "critical"
    assert spike.score > 10
    assert "3.0x" in spike.reason
    assert d.detect_global(observed=300, baseline=None) is None


def test_global_spike_needs_an_absolute_excess_on_tiny_counts() -> None:
    base = d.robust_baseline([1.0, 0.0, 2.0, 1.0, 1.0], method="trailing_24h_median_mad", window=WEEK)
    assert d.detect_global(observed=6, baseline=base) is None
    assert d.detect_global(observed=15, baseline=base) is not None


def test_global_drop_only_when_many_were_expected() -> None:
    base = d.robust_baseline([100.0] * 21, method="seasonal_median_mad", window=WEEK)
    drop = d.detect_global(observed=0, baseline=base)
    assert drop is not None
    assert drop.rule == "global_drop"
    assert drop.severity == "critical"
    assert d.detect_global(observed=60, baseline=base) is None
    night = d.robust_baseline([4.0] * 21, method="seasonal_median_mad", window=WEEK)
    assert d.detect_global(observed=0, baseline=night) is None


def test_seasonal_offsets_cover_a_week_of_neighbours() -> None:
    offsets = d.seasonal_offsets()
    assert len(offsets) == 21
    assert min(offsets) == timedelta(days=1, minutes=-5)
    assert max(offsets) == timedelta(days=7, minutes=5)


def test_spike_budget_counts_episodes_once_and_expires() -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    five = timedelta(minutes=5)
    budget = d.SpikeBudget()
    assert budget.threshold(t0) == 0.0
    # One long event: six buckets over the floor make a single episode at its peak.
    for i, z in enumerate([6.0, 30.0, 12.0, 8.0, 7.0, 6.0, 1.0]):
        budget = budget.record(t0 + i * five, z)
    assert budget.episodes == ((t0, 30.0),)
    budget = budget.record(t0 + timedelta(hours=5), 9.0).record(t0 + timedelta(hours=6), 1.0)
    budget = budget.record(t0 + timedelta(hours=9), 7.0)
    assert budget.threshold(t0 + timedelta(hours=10)) == 7.0
    assert budget.threshold(t0 + timedelta(hours=10), rank=0) == 0.0
    # A week later they are forgotten.
    assert budget.threshold(t0 + timedelta(days=7, hours=10)) == 0.0
    assert d.SpikeBudget.from_json(budget.to_json()) == budget
    assert d.SpikeBudget.from_json({"episodes": "junk"}) == d.SpikeBudget()


def test_spike_budget_raises_the_global_threshold() -> None:
    base = d.robust_baseline([100.0] * 21, method="seasonal_median_mad", window=WEEK)
    assert d.detect_global(observed=180, baseline=base) is not None
    assert d.detect_global(observed=180, baseline=base, budget_z=9.0) is None
    assert d.detect_global(observed=200, baseline=base, budget_z=9.0) is not None
