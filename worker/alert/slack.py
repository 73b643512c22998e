"""Slack-compatible incoming-webhook messages (Slack, Mattermost, Rocket.Chat read `text`)."""

from __future__ import annotations

from typing import Any

from worker.alert.notification import (
    Notification,
    baseline_of,
    describe_entity,
    format_score,
    summary,
    window_of,
)

_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}
#: payload figures shown as message fields, in this order, with their labels
_FIELDS = (
    ("observed", "Observed"),
    ("expected", "Expected"),
    ("threshold", "Threshold"),
    ("window", "Window"),
    ("score", "Score"),
    ("count", "Times seen"),
    ("suppressed", "Suppressed"),
    ("first_seen", "First seen"),
)


def _escape(text: str) -> str:
    # Slack mrkdwn treats these three as control characters
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_render(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def message(note: Notification) -> dict[str, Any]:
    """The Slack body: a plain `text` fallback plus blocks with the alert's figures."""
    p = note.payload
    severity = str(p.get("severity") or "warning").lower()
    emoji = ":white_check_mark:" if note.event == "resolved" else _EMOJI.get(severity, ":bell:")
    headline = _escape(summary(note))
    shown = {key: _render(p[key]) for key, _ in _FIELDS if p.get(key) is not None}
    if "score" in shown:
        shown["score"] = format_score(p) or shown["score"]
    window = window_of(p)
    if window is not None:
        shown["window"] = window
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{_escape(shown[key])}"}
        for key, label in _FIELDS
        if key in shown
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {headline}"}}
    ]
    if p.get("reason"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _escape(str(p["reason"]))}})
    if fields:
        # Slack allows at most 10 fields in a section
        blocks.append({"type": "section", "fields": fields[:10]})
    context = [f"rule `{_escape(str(p.get('rule', 'alert')))}`"]
    context.append(f"entity {_escape(describe_entity(p))}")
    if note.alert_id is not None:
        context.append(f"alert #{note.alert_id}")
    baseline = baseline_of(p)
    if baseline:
        context.append(f"baseline {_escape(baseline)}")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": f"{emoji} {headline}", "blocks": blocks}
