"""The Sentry sink: one message event per notification, grouped by a fingerprint, without PII.

Events go through a private sentry_sdk Client whose transport only collects the envelope;
we POST it ourselves so that a refused or slow Sentry is a failed attempt the outbox retries,
not an event silently dropped by a background thread. The process-wide Sentry set-up
(error reporting, Crons) is untouched.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from worker.alert import webhook
from worker.alert.notification import (
    PERSONAL_ENTITY_KINDS,
    Notification,
    entity_kind_and_label,
    entity_ref,
    summary,
)
from worker.alert.sink import DeliveryFailed

if TYPE_CHECKING:
    from sentry_sdk._types import Event

#: only these payload keys reach Sentry: figures and explanations, never user ids or IPs
_CONTEXT_KEYS = (
    "rule",
    "severity",
    "window",
    "observed",
    "expected",
    "baseline",
    "baseline_method",
    "baseline_window_seconds",
    "window_seconds",
    "threshold",
    "score",
    "score_kind",
    "count",
    "suppressed",
    "first_seen",
    "last_seen",
    "distinct_users",
    "distinct_ips",
    "reason",
)
_LEVELS = {"critical": "error", "warning": "warning", "info": "info"}
#: event ids derive from the delivery id, so a retry after an unconfirmed send is deduplicated
_EVENT_NAMESPACE = uuid.UUID("6f1d3c1e-5a0b-4e55-9a57-3c2f0d5e8b11")


class _CollectingTransport(Transport):
    """Keeps envelopes instead of sending them; SentrySink sends and checks the answer."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def fingerprint(payload: Mapping[str, Any]) -> list[str]:
    """Sentry grouping key: rule and entity, so repeats of one alert are one Sentry issue."""
    return ["sessionkeeper-alert", str(payload.get("rule") or "alert"), entity_ref(payload)]


def event_for(note: Notification) -> dict[str, Any]:
    """The Sentry event of a notification: message, level, fingerprint, tags, figures."""
    p = note.payload
    severity = str(p.get("severity") or "warning").lower()
    kind, label = entity_kind_and_label(p)
    # the title must not carry a user id or IP: say which kind of entity, not which one
    title = summary(note) if kind not in PERSONAL_ENTITY_KINDS or not label else _impersonal(note)
    context = {k: p[k] for k in _CONTEXT_KEYS if k in p}
    if label and kind in PERSONAL_ENTITY_KINDS and isinstance(context.get("reason"), str):
        # a detector's sentence might quote the user or IP; Sentry gets the hashed reference
        whole = rf"(?<![\w.:]){re.escape(label)}(?![\w:]|\.\w)"
        context["reason"] = re.sub(whole, entity_ref(p), context["reason"])
    context.update(event=note.event, alert_id=note.alert_id, entity=entity_ref(p))
    event: dict[str, Any] = {
        "message": title,
        "level": "info" if note.event in {"test", "resolved"} else _LEVELS.get(severity, "warning"),
        "logger": "sessionkeeper.alert",
        "fingerprint": fingerprint(p),
        "tags": {
            "rule": str(p.get("rule") or "alert"),
            "severity": severity,
            "alert_event": note.event,
            "entity_kind": kind,
        },
        "contexts": {"alert": context},
    }
    if note.delivery_id is not None:
        event["event_id"] = uuid.uuid5(_EVENT_NAMESPACE, str(note.delivery_id)).hex
    return event


def _impersonal(note: Notification) -> str:
    kind, _ = entity_kind_and_label(note.payload)
    masked = dict(note.payload)
    masked["entity"] = {"kind": kind, "id": entity_ref(note.payload).partition("#")[2]}
    return summary(dataclasses.replace(note, payload=masked))


def _version() -> str:
    try:
        return importlib.metadata.version("sessionkeeper")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class SentrySink:
    """Sends notifications to the configured Sentry DSN as message events."""

    name = "sentry"
    kind = "sentry"

    def __init__(self, *, dsn: str, environment: str, timeout: float) -> None:
        self.timeout = timeout
        self._client = sentry_sdk.Client(
            dsn=dsn,
            environment=environment,
            transport=_CollectingTransport,
            # set explicitly: the default makes the SDK run `git rev-parse` on every pass
            release=f"sessionkeeper@{_version()}",
            default_integrations=False,
            auto_enabling_integrations=False,
            max_breadcrumbs=0,
            # no background threads for a client that lives for one delivery pass
            enable_backpressure_handling=False,
        )
        transport = self._client.transport
        if not isinstance(transport, _CollectingTransport) or transport.parsed_dsn is None:
            raise DeliveryFailed("sentry.dsn could not be used")
        self._transport = transport
        self._auth = transport.parsed_dsn.to_auth(client="sessionkeeper-alerts/1")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False)

    async def send(self, note: Notification) -> int | None:
        """Build the event, then POST its envelope to Sentry; a 2xx answer is success."""
        self._transport.envelopes.clear()
        if self._client.capture_event(cast("Event", event_for(note))) is None:
            raise DeliveryFailed("the Sentry client dropped the event")
        envelopes, self._transport.envelopes = self._transport.envelopes, []
        status: int | None = None
        for envelope in envelopes:
            status = await webhook.post(
                self._http,
                self._auth.get_api_url(),
                content=envelope.serialize(),
                headers={
                    "Content-Type": "application/x-sentry-envelope",
                    "X-Sentry-Auth": self._auth.to_header(),
                    "User-Agent": webhook.USER_AGENT,
                },
            )
        return status

    async def aclose(self) -> None:
        """Close the HTTP pool and the private client."""
        await self._http.aclose()
        self._client.close()
