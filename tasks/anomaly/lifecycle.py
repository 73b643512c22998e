"""The alert state machine, pure: what to store and whether to notify, given a finding or a clear.

The scan persists ``AlertState`` in the alerts table and replays these decisions; the benchmarks
run the same functions in memory, so the notification counts they report are the ones an
operator would get.

    (none) --fires--> open [notify "new"]
    open   --fires, severity rises or value doubles--> open [notify "escalated"]
    open   --fires otherwise--> open [suppressed += 1]
    open   --clear for two windows--> resolved [notify "resolved"]
    resolved --fires after the cooldown--> open [notify "new"]
    resolved --fires within the cooldown--> open, silently (flapping), unless severity rises
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from tasks.anomaly.detectors import SEVERITY_RANK, Finding, Severity

#: the event names the alert outbox (worker.alert.outbox) accepts
EventKind = Literal["new", "escalated", "resolved"]
#: rules where a smaller observed value is worse, so "the value doubles" does not apply
_LOWER_IS_WORSE = frozenset({"global_drop"})


def fingerprint(rule: str, entity: str) -> str:
    """Stable dedup key of (rule, entity); hashed so it can be shown even when ids are redacted."""
    return hashlib.sha256(f"{rule}\x00{entity}".encode()).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class AlertState:
    """What the alerts table holds for one fingerprint."""

    fingerprint: str
    rule: str
    entity: str
    state: Literal["open", "resolved"]
    severity: Severity
    first_seen: datetime
    last_seen: datetime
    #: scans in which the rule fired for this entity, over the alert's whole life
    count: int
    last_value: float
    window: timedelta
    notified_at: datetime | None = None
    notified_severity: Severity | None = None
    notified_value: float | None = None
    #: whether the current open episode was announced (a silent reopen is not)
    episode_notified: bool = False
    #: firings that did not notify (dedup, cooldown, mass collapse)
    suppressed: int = 0
    resolved_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Event:
    """A notification to deliver: the outbox row the sinks read."""

    kind: EventKind
    state: AlertState
    finding: Finding | None


def _rank(severity: Severity | None) -> int:
    return -1 if severity is None else SEVERITY_RANK[severity]


def observe(
    state: AlertState | None, finding: Finding, *, now: datetime, cooldown: timedelta
) -> tuple[AlertState, Event | None]:
    """Fold one firing into the alert; return the new state and the notification, if any."""
    fp = fingerprint(finding.rule, finding.entity)
    if state is None:
        new = AlertState(
            fingerprint=fp,
            rule=finding.rule,
            entity=finding.entity,
            state="open",
            severity=finding.severity,
            first_seen=now,
            last_seen=now,
            count=1,
            last_value=finding.observed,
            window=finding.window,
        )
        return _notify(new, "new", finding, now)
    seen = replace(
        state,
        severity=finding.severity,
        last_seen=now,
        count=state.count + 1,
        last_value=finding.observed,
        window=finding.window,
    )
    if state.state == "resolved":
        recent = state.notified_at is not None and now - state.notified_at < cooldown
        if recent and _rank(finding.severity) <= _rank(state.notified_severity):
            flapping = replace(
                seen,
                state="open",
                resolved_at=None,
                episode_notified=False,
                suppressed=state.suppressed + 1,
            )
            return flapping, None
        reopened = replace(seen, state="open", resolved_at=None, first_seen=now)
        return _notify(reopened, "new", finding, now)
    if _rank(finding.severity) > _rank(state.notified_severity):
        return _notify(seen, "escalated" if state.episode_notified else "new", finding, now)
    if (
        finding.rule not in _LOWER_IS_WORSE
        and state.notified_value is not None
        and finding.observed >= 2 * state.notified_value
    ):
        return _notify(seen, "escalated" if state.episode_notified else "new", finding, now)
    return replace(seen, suppressed=state.suppressed + 1), None


def clear(state: AlertState, *, now: datetime, clear_windows: int = 2) -> tuple[AlertState, Event | None]:
    """The rule did not fire for this entity: resolve once clear for ``clear_windows`` windows."""
    if state.state != "open" or now - state.last_seen < clear_windows * state.window:
        return state, None
    resolved = replace(state, state="resolved", resolved_at=now)
    if not state.episode_notified:
        return replace(resolved, episode_notified=False), None
    return replace(resolved, episode_notified=False), Event(kind="resolved", state=resolved, finding=None)


def suppress(event: Event) -> AlertState:
    """Withhold a firing notification (mass-anomaly collapse) but keep the alert open.

    The notified severity and value stay recorded, so later scans stay quiet unless the alert
    escalates; no "resolved" notice follows an episode nobody was told about.
    """
    return replace(event.state, episode_notified=False, suppressed=event.state.suppressed + 1)


def _notify(state: AlertState, kind: EventKind, finding: Finding, now: datetime) -> tuple[AlertState, Event]:
    new = replace(
        state,
        notified_at=now,
        notified_severity=finding.severity,
        notified_value=finding.observed,
        episode_notified=True,
    )
    return new, Event(kind=kind, state=new, finding=finding)
