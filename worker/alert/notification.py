"""One alert notification as every sink sees it: event, explainable payload, one-line summary."""

from __future__ import annotations

import dataclasses
import decimal
import enum
import hashlib
import ipaddress
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.durations import format_duration

#: what happened to the alert; anything else is refused at enqueue
EVENTS = ("new", "escalated", "repeat", "resolved", "mass", "test")
#: version of the webhook body; bumped only for incompatible changes
BODY_VERSION = 1
#: entity kinds whose identifier is personal data (kept out of Sentry)
PERSONAL_ENTITY_KINDS = frozenset({"user", "ip"})
REDACTED = "[redacted]"

# Keys that must never leave the process, whatever a detector put in the payload.
_SECRET_KEY = re.compile(
    r"token|secret|passw|cookie|authorization|api[_-]?key|session[_-]?id|^sid$", re.IGNORECASE
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Notification:
    """A queued (or test) notification, ready to be rendered by a sink."""

    #: the alert_deliveries row (None for `sessionkeeper alerts test`); receivers dedupe on it
    delivery_id: int | None
    alert_id: int | None
    event: str
    payload: Mapping[str, Any]
    #: 1 on the first try, 2 on the first retry...
    attempt: int = 1


def normalize_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON-safe copy of an alert payload with secret-looking keys redacted.

    Datetimes become ISO 8601 UTC strings, timedeltas durations like "10m", sets lists.
    Raises ValueError naming the key when a value cannot be represented in JSON.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"an alert payload must be a mapping, not {type(payload).__name__}")
    return {str(k): _jsonable(v, str(k)) for k, v in payload.items()}


def _jsonable(value: Any, key: str) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # NaN and infinity are not JSON; a detector with no baseline yet reports nothing
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, key)
    if isinstance(
        value,
        uuid.UUID
        | ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network,
    ):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v, key) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    raise ValueError(f"alert payload key {key!r} holds a {type(value).__name__}, not JSON data")


#: rule-name prefixes that say what a bare entity string is ("user_burst" on "42")
_RULE_ENTITY_KINDS = (("user", "user"), ("ip", "ip"), ("global", "global"))


def entity_kind_and_label(payload: Mapping[str, Any]) -> tuple[str, str]:
    """The alert's entity as (kind, label): ("user", "42"), ("ip", "10.0.0.1"), ("global", "").

    Accepts {"kind", "id"} mappings, "kind:label" strings, or a bare label whose kind the
    rule name gives (user_burst -> user, ip_spread -> ip, global_* -> global).
    """
    entity = payload.get("entity")
    kind = str(payload.get("entity_kind") or "")
    if isinstance(entity, Mapping):
        kind = str(entity.get("kind") or kind)
        label = entity.get("id", entity.get("value", entity.get("label", "")))
        return kind or "entity", "" if label is None else str(label)
    text = "" if entity is None else str(entity)
    if not kind:
        rule = str(payload.get("rule") or "")
        kind = next((k for prefix, k in _RULE_ENTITY_KINDS if rule.startswith(prefix)), "")
    if text == "global" or (kind == "global" and not text):
        return "global", ""
    if not kind and text.count(":") == 1:
        # "user:42" style; more than one colon is an IPv6 address, not a prefix
        kind, _, text = text.partition(":")
    return kind or ("global" if not text else "entity"), text


def entity_ref(payload: Mapping[str, Any]) -> str:
    """A stable, non-personal reference to the entity: the label, or a hash for users and IPs."""
    kind, label = entity_kind_and_label(payload)
    if kind in PERSONAL_ENTITY_KINDS and label:
        return f"{kind}#{hashlib.sha256(label.encode()).hexdigest()[:12]}"
    return f"{kind}:{label}" if label else kind


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return f"{value:.3g}"


def _window(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(timedelta(seconds=value))
    return str(value)


def window_of(payload: Mapping[str, Any]) -> str | None:
    """The alert's window as "10m", from `window` or `window_seconds`."""
    value = payload.get("window", payload.get("window_seconds"))
    return None if value is None else _window(value)


def baseline_of(payload: Mapping[str, Any]) -> str | None:
    """How the expectation was computed, e.g. "seasonal_median_mad over 7d"."""
    baseline = payload.get("baseline")
    if isinstance(baseline, Mapping):
        method, window = baseline.get("method"), baseline.get("window")
    else:
        method = baseline if baseline is not None else payload.get("baseline_method")
        window = payload.get("baseline_window", payload.get("baseline_window_seconds"))
    if method is None:
        return None
    return f"{method} over {_window(window)}" if window is not None else str(method)


def format_score(payload: Mapping[str, Any]) -> str | None:
    """The score as "p_value=1.2e-09" or "z=5.1", or None when the alert has none."""
    score = payload.get("score")
    if score is None:
        return None
    if isinstance(score, Mapping):
        name = str(score.get("kind") or score.get("name") or "score")
        return f"{name}={_number(score.get('value'))}"
    name = str(payload.get("score_kind") or "score")
    return f"{name}={_number(score)}"


def describe_entity(payload: Mapping[str, Any]) -> str:
    """ "user 42", "ip 10.0.0.1", "global"... for summaries."""
    kind, label = entity_kind_and_label(payload)
    return f"{kind} {label}" if label else kind


def summary(note: Notification) -> str:
    """One human line saying what was seen against what was expected, for logs and chat."""
    p = note.payload
    rule = str(p.get("rule") or "alert")
    severity = str(p.get("severity") or "warning").upper()
    where = describe_entity(p)
    if note.event == "test":
        return "TEST: sessionkeeper alert delivery works (no action needed)"
    if note.event == "resolved":
        return f"RESOLVED: {rule} on {where} is back to normal"
    if note.event == "mass":
        count = p.get("count", p.get("alerts", "many"))
        line = f"{severity} mass anomaly: {_number(count)} {rule} alerts in one scan"
        top = p.get("top") or p.get("entries") or []
        if isinstance(top, list) and top:
            names = [describe_entity(t) if isinstance(t, Mapping) else str(t) for t in top[:5]]
            line += "; top: " + ", ".join(names)
        return line
    verb = {"new": "", "escalated": " (escalated)", "repeat": " (still firing)"}.get(note.event, "")
    line = f"{severity}{verb}: {rule} on {where}"
    if "observed" in p:
        line += f": observed {_number(p['observed'])}"
        window = window_of(p)
        if window is not None:
            line += f" in {window}"
    figures = []
    if p.get("expected") is not None:
        figures.append(f"expected {_number(p['expected'])}")
    if p.get("threshold") is not None:
        figures.append(f"threshold {_number(p['threshold'])}")
    score = format_score(p)
    if score:
        figures.append(score)
    return line + (f" ({', '.join(figures)})" if figures else "")


def body(note: Notification, *, sent_at: datetime) -> dict[str, Any]:
    """The JSON document a webhook receives (documented in docs/alerts.md)."""
    return {
        "version": BODY_VERSION,
        "event": note.event,
        "delivery_id": note.delivery_id,
        "alert_id": note.alert_id,
        "attempt": note.attempt,
        "sent_at": _jsonable(sent_at, "sent_at"),
        "summary": summary(note),
        "alert": dict(note.payload),
    }


def test_payload(*, now: datetime) -> dict[str, Any]:
    """The explainable payload of `sessionkeeper alerts test`, shaped like a real alert."""
    return normalize_payload(
        {
            "rule": "test",
            "entity": {"kind": "global", "id": None},
            "severity": "info",
            "window": timedelta(minutes=10),
            "observed": 0,
            "expected": 0,
            "baseline": {"method": "none", "window": None},
            "threshold": None,
            "score": None,
            "first_seen": now,
            "last_seen": now,
            "count": 1,
            "suppressed": 0,
            "reason": "a test notification sent by `sessionkeeper alerts test`",
        }
    )
