"""The alert state machine: dedup, escalation, cooldown, resolve after two clear windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.anomaly import lifecycle
from tasks.anomaly.detectors import Finding, Severity

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
COOLDOWN = timedelta(minutes=60)


def finding(observed: float, severity: Severity = "warning", rule: str = "user_burst") -> Finding:
    return Finding(
        rule=rule,
        entity="u1",
        window=timedelta(minutes=10),
        observed=observed,
        expected=0.1,
        baseline_method="test",
        baseline_window=timedelta(days=7),
        threshold=10,
        score=1e-9,
        score_kind="p_value",
        severity=severity,
        reason="test",
    )


def test_new_then_dedup_then_escalate_on_doubling_and_severity() -> None:
    state, event = lifecycle.observe(None, finding(12), now=T0, cooldown=COOLDOWN)
    assert event is not None
    assert event.kind == "new"
    state, event = lifecycle.observe(state, finding(15), now=T0 + MIN, cooldown=COOLDOWN)
    assert event is None
    assert state.suppressed == 1
    assert state.count == 2
    state, event = lifecycle.observe(state, finding(24), now=T0 + 2 * MIN, cooldown=COOLDOWN)
    assert event is not None
    assert event.kind == "escalated"
    state, event = lifecycle.observe(state, finding(30, "critical"), now=T0 + 3 * MIN, cooldown=COOLDOWN)
    assert event is not None
    assert event.kind == "escalated"
    assert state.first_seen == T0
    assert state.fingerprint == lifecycle.fingerprint("user_burst", "u1")


def test_drop_does_not_escalate_on_a_doubling_value() -> None:
    state, _ = lifecycle.observe(None, finding(2, rule="global_drop"), now=T0, cooldown=COOLDOWN)
    state, event = lifecycle.observe(state, finding(5, rule="global_drop"), now=T0 + MIN, cooldown=COOLDOWN)
    assert event is None


def test_resolve_after_two_clear_windows_then_cooldown() -> None:
    state, _ = lifecycle.observe(None, finding(12), now=T0, cooldown=COOLDOWN)
    state, event = lifecycle.clear(state, now=T0 + 19 * MIN)
    assert event is None
    assert state.state == "open"
    state, event = lifecycle.clear(state, now=T0 + 20 * MIN)
    assert event is not None
    assert event.kind == "resolved"
    assert state.state == "resolved"
    # Fires again within the cooldown: reopened silently (flapping).
    state, event = lifecycle.observe(state, finding(12), now=T0 + 30 * MIN, cooldown=COOLDOWN)
    assert event is None
    assert state.state == "open"
    # ... and resolving a silent episode sends nothing either.
    state, event = lifecycle.clear(state, now=T0 + 55 * MIN)
    assert event is None
    assert state.state == "resolved"
    # After the cooldown it is news again.
    state, event = lifecycle.observe(state, finding(12), now=T0 + 70 * MIN, cooldown=COOLDOWN)
    assert event is not None
    assert event.kind == "new"
    assert state.first_seen == T0 + 70 * MIN


def test_reopen_within_cooldown_notifies_when_more_severe() -> None:
    state, _ = lifecycle.observe(None, finding(12), now=T0, cooldown=COOLDOWN)
    state, _ = lifecycle.clear(state, now=T0 + 20 * MIN)
    state, event = lifecycle.observe(state, finding(60, "critical"), now=T0 + 25 * MIN, cooldown=COOLDOWN)
    assert event is not None
    assert event.kind == "new"


def test_suppressed_firing_stays_quiet_until_it_escalates() -> None:
    _, event = lifecycle.observe(None, finding(12), now=T0, cooldown=COOLDOWN)
    assert event is not None
    state = lifecycle.suppress(event)
    assert not state.episode_notified
    state, again = lifecycle.observe(state, finding(13), now=T0 + MIN, cooldown=COOLDOWN)
    assert again is None
    state, up = lifecycle.observe(state, finding(13, "critical"), now=T0 + 2 * MIN, cooldown=COOLDOWN)
    assert up is not None
    assert up.kind == "new"
    state, _ = lifecycle.clear(lifecycle.suppress(up), now=T0 + 30 * MIN)
    assert state.state == "resolved"
