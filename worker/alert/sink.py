"""What every sink is: a name, a kind, a timeout and an async send; which sinks are configured."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from worker.alert.notification import Notification
from worker.errors import SessionkeeperError
from worker.settings import Settings


class DeliveryFailed(SessionkeeperError):
    """A sink did not accept a notification; the outbox retries it later."""

    code = "delivery_failed"

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: seconds the receiver asked us to wait (Retry-After), if it said
        self.retry_after = retry_after


class Sink(Protocol):
    """A destination for notifications. send() raises DeliveryFailed when not accepted."""

    name: str
    kind: str
    #: seconds one attempt may take, from connect to the last byte of the answer
    timeout: float

    async def send(self, note: Notification) -> int | None:
        """Deliver one notification; return the HTTP status (None when not over HTTP)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@dataclasses.dataclass(frozen=True)
class SinkSpec:
    """A configured sink as the outbox records it (no connection, no secret)."""

    name: str
    kind: str

    def accepts(self, event: str) -> bool:
        """Whether this sink takes the event at all (Sentry has no use for resolved notices)."""
        return not (self.kind == "sentry" and event == "resolved")


def webhook_kind(fmt: str) -> str:
    """The sink kind of a webhook by its body format: "webhook" (our JSON) or "slack"."""
    return "slack" if fmt == "slack" else "webhook"


def configured_sinks(settings: Settings) -> list[SinkSpec]:
    """The sinks notifications go to: the log always, Sentry when a DSN is set, each webhook."""
    specs = [SinkSpec("log", "log")]
    if settings.alerts.sentry and settings.sentry.dsn is not None:
        specs.append(SinkSpec("sentry", "sentry"))
    specs.extend(SinkSpec(hook.name, webhook_kind(hook.format)) for hook in settings.alerts.webhooks)
    return specs


def build_sinks(settings: Settings) -> dict[str, Sink]:
    """Instantiate every configured sink, by name. Call inside the event loop that sends."""
    # Imported here: the senders pull in httpx and sentry_sdk, which enqueue() never needs.
    from worker.alert import log, sentry, webhook

    sinks: dict[str, Sink] = {"log": log.LogSink()}
    if settings.alerts.sentry and settings.sentry.dsn is not None:
        sinks["sentry"] = sentry.SentrySink(
            dsn=settings.sentry.dsn.get_secret_value(),
            environment=settings.sentry.environment,
            timeout=settings.alerts.sentry_timeout.total_seconds(),
        )
    for hook in settings.alerts.webhooks:
        sinks[hook.name] = webhook.Webhook(hook)
    return sinks
