"""Alert notifications: payload normalising, redaction, summary, body, Slack and Sentry shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from ipaddress import ip_address

import pytest

from worker.alert import notification, sentry, slack
from worker.alert.notification import Notification

NOW = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)


def burst(**extra: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "rule": "user_burst",
        "entity": {"kind": "user", "id": "42"},
        "window": timedelta(minutes=10),
        "observed": 55,
        "expected": 0.41,
        "baseline": {"method": "gamma_poisson", "window": timedelta(days=7)},
        "threshold": 10,
        "score": {"kind": "p_value", "value": 1.2e-9},
        "severity": "critical",
        "first_seen": NOW,
        "count": 1,
        "suppressed": 0,
    }
    payload.update(extra)
    return notification.normalize_payload(payload)


def test_normalize_makes_json_data() -> None:
    payload = notification.normalize_payload(
        {
            "first_seen": NOW,
            "naive": datetime(2026, 1, 1, 12, 0),  # noqa: DTZ001 - naive input is taken as UTC
            "window": timedelta(minutes=10),
            "ratio": Decimal("2.5"),
            "ip": ip_address("10.0.0.1"),
            "ips": {"b", "a"},
            "nan": float("nan"),
        }
    )
    assert payload == {
        "first_seen": "2026-12-04T18:00:00Z",
        "naive": "2026-01-01T12:00:00Z",
        "window": "10m",
        "ratio": 2.5,
        "ip": "10.0.0.1",
        "ips": ["a", "b"],
        "nan": None,
    }
    json.dumps(payload)


def test_normalize_redacts_secret_keys_at_any_depth() -> None:
    payload = notification.normalize_payload(
        {
            "token": "abc",
            "nested": {"session_id": "s1", "api_key": "k", "users": 3},
            "sample": [{"Cookie": "c", "user": "7"}],
        }
    )
    assert payload["token"] == notification.REDACTED
    assert payload["nested"] == {"session_id": "[redacted]", "api_key": "[redacted]", "users": 3}
    assert payload["sample"] == [{"Cookie": "[redacted]", "user": "7"}]


def test_normalize_refuses_objects_with_the_key_named() -> None:
    with pytest.raises(ValueError, match="'thing'"):
        notification.normalize_payload({"thing": object()})


@pytest.mark.parametrize(
    ("entity", "expected"),
    [
        ({"kind": "user", "id": "42"}, ("user", "42")),
        ("ip:10.0.0.1", ("ip", "10.0.0.1")),
        ("2001:db8::1", ("entity", "2001:db8::1")),
        (None, ("global", "")),
    ],
)
def test_entity_forms(entity: object, expected: tuple[str, str]) -> None:
    assert notification.entity_kind_and_label({"entity": entity}) == expected


def test_summary_explains_the_alert() -> None:
    note = Notification(delivery_id=1, alert_id=7, event="new", payload=burst())
    assert notification.summary(note) == (
        "CRITICAL: user_burst on user 42: observed 55 in 10m (expected 0.41, threshold 10, p_value=1.2e-09)"
    )
    resolved = Notification(delivery_id=2, alert_id=7, event="resolved", payload=burst())
    assert notification.summary(resolved) == "RESOLVED: user_burst on user 42 is back to normal"


def test_mass_summary_lists_top_entries() -> None:
    payload = burst(count=31, top=[{"entity": {"kind": "user", "id": str(i)}} for i in range(8)])
    note = Notification(delivery_id=1, alert_id=None, event="mass", payload=payload)
    text = notification.summary(note)
    assert text.startswith("CRITICAL mass anomaly: 31 user_burst alerts in one scan; top: user 0")
    assert "user 4" in text
    assert "user 5" not in text


def test_body_shape() -> None:
    note = Notification(delivery_id=9, alert_id=7, event="escalated", payload=burst(), attempt=2)
    doc = notification.body(note, sent_at=NOW)
    assert set(doc) == {
        "version",
        "event",
        "delivery_id",
        "alert_id",
        "attempt",
        "sent_at",
        "summary",
        "alert",
    }
    assert doc["version"] == 1
    assert doc["event"] == "escalated"
    assert doc["sent_at"] == "2026-12-04T18:00:00Z"
    assert doc["alert"]["observed"] == 55
    assert doc["alert"]["baseline"] == {"method": "gamma_poisson", "window": "7d"}


def test_test_payload_is_shaped_like_an_alert() -> None:
    payload = notification.test_payload(now=NOW)
    for key in ("rule", "entity", "window", "observed", "expected", "severity", "first_seen"):
        assert key in payload
    note = Notification(delivery_id=None, alert_id=None, event="test", payload=payload)
    assert notification.summary(note).startswith("TEST:")


def test_slack_message() -> None:
    note = Notification(delivery_id=1, alert_id=7, event="new", payload=burst(rule="a<b>&c", count=3))
    msg = slack.message(note)
    assert msg["text"].startswith(":rotating_light: CRITICAL: a&lt;b&gt;&amp;c on user 42")
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds == ["section", "section", "context"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in msg["blocks"][1]["fields"]}
    assert fields["*Observed*"] == "55"
    assert fields["*Window*"] == "10m"
    assert fields["*Score*"] == "p_value=1.2e-09"
    assert "alert #7" in msg["blocks"][2]["elements"][0]["text"]
    assert len(msg["blocks"][1]["fields"]) <= 10


def test_slack_resolved_uses_a_check_mark() -> None:
    note = Notification(delivery_id=1, alert_id=7, event="resolved", payload=burst())
    assert slack.message(note)["text"].startswith(":white_check_mark: RESOLVED")


def test_sentry_event_groups_and_hides_personal_data() -> None:
    first = sentry.event_for(Notification(delivery_id=1, alert_id=7, event="new", payload=burst()))
    again = sentry.event_for(
        Notification(delivery_id=2, alert_id=7, event="repeat", payload=burst(observed=80))
    )
    assert first["fingerprint"] == again["fingerprint"]
    assert first["fingerprint"][:2] == ["sessionkeeper-alert", "user_burst"]
    assert first["tags"] == {
        "rule": "user_burst",
        "severity": "critical",
        "alert_event": "new",
        "entity_kind": "user",
    }
    assert first["level"] == "error"
    text = json.dumps(first)
    assert '"42"' not in text
    assert "user 42" not in text
    assert first["contexts"]["alert"]["observed"] == 55
    # a retry of the same delivery reuses the event id, so Sentry drops the duplicate
    retry = sentry.event_for(Notification(delivery_id=1, alert_id=7, event="new", payload=burst()))
    assert retry["event_id"] == first["event_id"]
    assert again["event_id"] != first["event_id"]


def test_sentry_keeps_global_entities_readable() -> None:
    payload = burst(rule="global_spike", entity={"kind": "global", "id": None}, severity="warning")
    event = sentry.event_for(Notification(delivery_id=1, alert_id=3, event="new", payload=payload))
    assert event["fingerprint"] == ["sessionkeeper-alert", "global_spike", "global"]
    assert event["message"].startswith("WARNING: global_spike on global")
    assert event["level"] == "warning"


def finding_payload() -> dict[str, object]:
    """The shape the anomaly scan writes (a Finding's to_dict plus lifecycle figures)."""
    return notification.normalize_payload(
        {
            "rule": "user_burst",
            "entity": "42",
            "window_seconds": 600,
            "observed": 55.0,
            "expected": 0.4123,
            "baseline_method": "gamma_poisson(user history shrunk to population)",
            "baseline_window_seconds": 604800,
            "threshold": 10.0,
            "score": 1.2e-9,
            "score_kind": "p_value",
            "severity": "critical",
            "reason": "55 sessions in 10 min for user 42, expected 0.42 (p=1.2e-09)",
            "details": {"distinct_ips": 3},
            "first_seen": NOW,
            "count": 2,
            "suppressed": 1,
        }
    )


def test_flat_finding_payloads_read_the_same() -> None:
    payload = finding_payload()
    note = Notification(delivery_id=5, alert_id=8, event="new", payload=payload)
    assert notification.entity_kind_and_label(payload) == ("user", "42")
    assert notification.summary(note) == (
        "CRITICAL: user_burst on user 42: observed 55 in 10m (expected 0.412, threshold 10, p_value=1.2e-09)"
    )
    assert notification.baseline_of(payload) == ("gamma_poisson(user history shrunk to population) over 7d")
    msg = slack.message(note)
    texts = json.dumps(msg)
    assert "for user 42, expected 0.42" in texts
    assert "*Window*\\n10m" in texts
    event = sentry.event_for(note)
    assert "user 42" not in json.dumps(event)
    assert '"42"' not in json.dumps(event)
    reason = event["contexts"]["alert"]["reason"]
    assert reason.startswith("55 sessions in 10 min for user user#")
    assert reason.endswith(", expected 0.42 (p=1.2e-09)")


@pytest.mark.parametrize(
    ("rule", "entity", "expected"),
    [
        ("ip_spread", "10.0.0.9", ("ip", "10.0.0.9")),
        ("ip_spread", "2001:db8::1", ("ip", "2001:db8::1")),
        ("global_spike", "global", ("global", "")),
        ("purge_lag", "global", ("global", "")),
    ],
)
def test_rule_names_give_the_entity_kind(rule: str, entity: str, expected: object) -> None:
    assert notification.entity_kind_and_label({"rule": rule, "entity": entity}) == expected
