"""Persist the alert lifecycle: fold a scan's findings into the alerts table, queue notifications.

The decisions are tasks.anomaly.lifecycle's (pure); this module only maps rows to states and
back, applies the mass-anomaly collapse, redacts what settings forbid sharing, and queues each
notification in the alert_deliveries outbox inside the scan's own transaction, so an alert and
its notification commit (or roll back) together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from tasks.anomaly import lifecycle, queries
from tasks.anomaly.detectors import SEVERITY_RANK, Finding
from tasks.anomaly.lifecycle import AlertState, Event
from worker.alert import outbox
from worker.settings import Settings

#: rule -> the entity kind the alert sinks show (user ids and IPs are personal data)
ENTITY_KINDS = {"user_burst": "user", "ip_spread": "ip", "mass_anomaly": "rule"}
#: how many entries a mass-anomaly notification lists
MASS_TOP = 10
#: rules whose floods collapse, and the window within which their new alerts are counted
MASS_RULES = {"user_burst": timedelta(minutes=10), "ip_spread": timedelta(minutes=10)}
MASS_FINGERPRINTS = {rule: lifecycle.fingerprint("mass_anomaly", rule) for rule in MASS_RULES}


def cooldown_for(rule: str, settings: Settings) -> timedelta:
    """The per-rule cooldown from settings (user 60 min, IP 30 min, global 15 min by default)."""
    cfg = settings.anomaly
    if rule in {"user_burst", "mass_anomaly"}:
        return cfg.cooldown_user
    if rule == "ip_spread":
        return cfg.cooldown_ip
    if rule.startswith("global_"):
        return cfg.cooldown_global
    return cfg.cooldown_operational


@dataclass
class Outcome:
    """What one scan did to the alerts: notifications by event, and the alerts it touched."""

    notifications: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    resolved: int = 0
    suppressed: int = 0
    mass_collapsed: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


def _state_from_row(row: dict[str, Any]) -> AlertState:
    details = row["details"] or {}
    return AlertState(
        fingerprint=row["fingerprint"],
        rule=row["rule"],
        entity=row["entity"],
        state=row["state"],
        severity=row["severity"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        count=row["count"],
        last_value=row["last_value"] or 0.0,
        window=timedelta(seconds=int(details.get("window_seconds", 600))),
        notified_at=row["last_notified_at"],
        notified_severity=row["notified_severity"],
        notified_value=row["notified_value"],
        episode_notified=bool(details.get("episode_notified", False)),
        suppressed=row["suppressed"],
        resolved_at=row["resolved_at"],
    )


def _row_values(state: AlertState, finding: Finding | None, old_details: dict[str, Any]) -> dict[str, Any]:
    details = dict(old_details)
    if finding is not None:
        details.update(finding.to_dict())
    details["episode_notified"] = state.episode_notified
    details["window_seconds"] = int(state.window.total_seconds())
    return {
        "fingerprint": state.fingerprint,
        "rule": state.rule,
        "entity": state.entity,
        "severity": state.severity,
        "state": state.state,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "count": state.count,
        "suppressed": state.suppressed,
        "last_value": state.last_value,
        "last_notified_at": state.notified_at,
        "notified_severity": state.notified_severity,
        "notified_value": state.notified_value,
        "clear_since": None if state.state == "open" and finding is not None else state.last_seen,
        "resolved_at": state.resolved_at,
        "details": details,
    }


def _redact(kind: str, entity: str, settings: Settings) -> str:
    allowed = {"user": settings.alerts.include_user_ids, "ip": settings.alerts.include_ips}
    if allowed.get(kind, True):
        return entity
    return f"{kind}#{hashlib.sha256(entity.encode()).hexdigest()[:12]}"


def payload_for(
    state: AlertState, finding: Finding | None, details: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """The explainable notification body: the finding plus the alert's life so far."""
    kind = ENTITY_KINDS.get(state.rule, "global" if state.rule.startswith("global_") else "system")
    body: dict[str, Any] = {k: v for k, v in details.items() if k not in {"episode_notified"}}
    if finding is not None:
        body.update(finding.to_dict())
    body.update(
        {
            "rule": state.rule,
            "entity": _redact(kind, state.entity, settings),
            "entity_kind": kind,
            "severity": state.severity,
            "fingerprint": state.fingerprint,
            "first_seen": state.first_seen.isoformat(),
            "last_seen": state.last_seen.isoformat(),
            "count": state.count,
            "suppressed": state.suppressed,
        }
    )
    if state.rule == "mass_anomaly" and finding is not None:
        # The sinks read "count" and "top" of a mass notice as the alerts it stands for.
        body.update(count=finding.details["count"], top=finding.details["top"], scans=state.count)
    if "top" in body:
        kind_of_top = ENTITY_KINDS.get(str(body.get("details", {}).get("of_rule", "user_burst")), "user")
        body["top"] = [
            {**entry, "entity": _redact(kind_of_top, str(entry.get("entity")), settings)}
            for entry in body["top"]
        ]
    return body


def apply(conn: Connection, findings: Sequence[Finding], *, now: datetime, settings: Settings) -> Outcome:
    """Fold findings into the alerts table and queue the resulting notifications."""
    best: dict[str, Finding] = {}
    for f in findings:
        fp = lifecycle.fingerprint(f.rule, f.entity)
        old = best.get(fp)
        if old is None or SEVERITY_RANK[f.severity] > SEVERITY_RANK[old.severity]:
            best[fp] = f
    # The mass alert's row is read too, so a collapse can update it rather than duplicate it.
    rows = {
        r["fingerprint"]: r for r in queries.alerts_for_lifecycle(conn, [*best, *MASS_FINGERPRINTS.values()])
    }
    states: dict[str, tuple[AlertState, Finding | None]] = {}
    events: list[Event] = []
    for fp, f in best.items():
        row = rows.get(fp)
        new_state, event = lifecycle.observe(
            _state_from_row(row) if row else None, f, now=now, cooldown=cooldown_for(f.rule, settings)
        )
        states[fp] = (new_state, f)
        if event is not None:
            events.append(event)
    for fp, row in rows.items():
        if fp in best or row["state"] != "open":
            continue
        new_state, event = lifecycle.clear(_state_from_row(row), now=now)
        states[fp] = (new_state, None)
        if event is not None:
            events.append(event)
    outcome = Outcome()
    events = _collapse(events, states, outcome, now=now, settings=settings, rows=rows)
    ids: dict[str, int] = {}
    for fp, (state, found) in states.items():
        row = rows.get(fp)
        values = _row_values(state, found, (row or {}).get("details") or {})
        if row is None:
            ids[fp] = queries.insert_alert(conn, values)
        else:
            ids[fp] = row["id"]
            queries.update_alert(conn, row["id"], values)
        outcome.suppressed += state.suppressed - (row["suppressed"] if row else 0)
    for event in events:
        state, found = states[event.state.fingerprint]
        kind = "mass" if state.rule == "mass_anomaly" and event.kind == "new" else event.kind
        old_details = (rows.get(state.fingerprint) or {}).get("details") or {}
        details = _row_values(state, found, old_details)["details"]
        payload = payload_for(state, found, details, settings)
        outbox.enqueue(conn, alert_id=ids[state.fingerprint], event=kind, payload=payload, settings=settings)
        outcome.notifications[kind] = outcome.notifications.get(kind, 0) + 1
        outcome.opened += event.kind == "new"
        outcome.resolved += event.kind == "resolved"
        outcome.events.append(
            {
                "event": kind,
                "rule": state.rule,
                "severity": state.severity,
                "reason": payload.get("reason"),
                # for the caller's own use (benchmarks); ScanResult.summary() leaves it out
                "entity": state.entity,
            }
        )
    return outcome


def mass_threshold(rule: str, settings: Settings) -> int:
    """New alerts of a rule within one window beyond which they collapse into one notice.

    ``anomaly.mass_anomaly_threshold`` (20) for users; a quarter of it (at least 3) for IPs,
    since even five addresses each serving many accounts at once is one event, not five.
    """
    limit = settings.anomaly.mass_anomaly_threshold
    return limit if rule == "user_burst" else max(3, limit // 4)


def _collapse(
    events: list[Event],
    states: dict[str, tuple[AlertState, Finding | None]],
    outcome: Outcome,
    *,
    now: datetime,
    settings: Settings,
    rows: dict[str, dict[str, Any]],
) -> list[Event]:
    """Too many new alerts of one kind: one "mass" notice instead of the flood.

    Counts this scan's new user-burst (or IP-spread) alerts plus those opened within the
    rule's window before it, so a flood spread over a few scans collapses too.
    """
    for rule, window in MASS_RULES.items():
        fresh = [e for e in events if e.kind == "new" and e.state.rule == rule]
        if not fresh:
            continue
        fresh_fingerprints = {e.state.fingerprint for e in fresh}
        recent = sum(
            1
            for fp, row in rows.items()
            if row["rule"] == rule
            and row["state"] == "open"
            and row["first_seen"] >= now - window
            and fp not in fresh_fingerprints
        )
        if len(fresh) + recent <= mass_threshold(rule, settings):
            continue
        events = _collapse_rule(rule, fresh, events, states, outcome, now=now, settings=settings, rows=rows)
    return events


def _collapse_rule(
    rule: str,
    fresh: list[Event],
    events: list[Event],
    states: dict[str, tuple[AlertState, Finding | None]],
    outcome: Outcome,
    *,
    now: datetime,
    settings: Settings,
    rows: dict[str, dict[str, Any]],
) -> list[Event]:
    for fresh_event in fresh:
        state, found = states[fresh_event.state.fingerprint]
        states[fresh_event.state.fingerprint] = (lifecycle.suppress(replace(fresh_event, state=state)), found)
    outcome.mass_collapsed += len(fresh)
    ranked = sorted((e.finding for e in fresh if e.finding), key=lambda f: (-f.observed, f.score))
    top = [
        {"entity": f.entity, "observed": f.observed, "expected": round(f.expected, 3), "score": f.score}
        for f in ranked[:MASS_TOP]
    ]
    limit = mass_threshold(rule, settings)
    what = "users burst" if rule == "user_burst" else "addresses each served many users"
    mass = Finding(
        rule="mass_anomaly",
        entity=rule,
        window=MASS_RULES[rule],
        observed=float(len(fresh)),
        expected=float(limit),
        baseline_method="alerts raised in one window",
        baseline_window=MASS_RULES[rule],
        threshold=float(limit),
        score=float(len(fresh)),
        score_kind="count",
        severity="critical",
        reason=(
            f"{len(fresh)} {what} at once (more than {limit}): a bot farm, credential stuffing, "
            "or a release that logged everyone in again"
        ),
        details={"count": len(fresh), "top": top, "of_rule": rule},
    )
    fp = MASS_FINGERPRINTS[rule]
    old = states[fp][0] if fp in states else (_state_from_row(rows[fp]) if fp in rows else None)
    mass_state, mass_event = lifecycle.observe(old, mass, now=now, cooldown=cooldown_for(rule, settings))
    states[fp] = (mass_state, mass)
    kept = [e for e in events if e not in fresh]
    return [*kept, mass_event] if mass_event is not None else kept
