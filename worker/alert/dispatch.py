"""Sending to sinks: one attempt bounded by the sink's timeout, the retry schedule, test sends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.alert.notification import Notification, test_payload
from worker.alert.sink import DeliveryFailed, Sink, build_sinks
from worker.observability import get_logger
from worker.settings import Settings

log = get_logger("sessionkeeper.alert")


def retry_delay(
    failures: int, *, base: timedelta, cap: timedelta, retry_after: float | None = None
) -> timedelta:
    """Wait before the next attempt after `failures` failed ones: base, 2x, 4x... up to cap.

    A receiver's Retry-After is honoured when longer, but never beyond cap.
    """
    if failures < 1:
        raise ValueError("failures counts failed attempts and starts at 1")
    # computed in float seconds: a timedelta overflows long before the exponent gets large
    seconds = base.total_seconds() * 2.0 ** min(failures - 1, 64)
    delay = min(timedelta(seconds=min(seconds, cap.total_seconds())), cap)
    if retry_after is not None:
        delay = max(delay, min(timedelta(seconds=retry_after), cap))
    return delay


async def attempt(sink: Sink, note: Notification) -> tuple[int | None, DeliveryFailed | None]:
    """One bounded attempt: (status, None) on success, (None, failure) otherwise."""
    try:
        return await asyncio.wait_for(sink.send(note), timeout=sink.timeout), None
    except TimeoutError:
        return None, DeliveryFailed(f"no answer within {sink.timeout:g}s")
    except DeliveryFailed as exc:
        return None, exc
    except Exception as exc:
        # A bug in one sink must not stop the others nor lose the alert: retry like a failure.
        # Only the class name is kept: the message could quote a URL with a token in it.
        log.warning("alert_sink_crashed", sink=sink.name, error=type(exc).__name__)
        return None, DeliveryFailed(f"sink crashed: {type(exc).__name__}")


async def _test_one(sink: Sink, note: Notification) -> dict[str, Any]:
    started = time.monotonic()
    status, failure = await attempt(sink, note)
    return {
        "sink": sink.name,
        "kind": sink.kind,
        "ok": failure is None,
        "status_code": status if failure is None else failure.status_code,
        "error": None if failure is None else failure.message,
        "seconds": round(time.monotonic() - started, 3),
    }


async def _send_test(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    note = Notification(delivery_id=None, alert_id=None, event="test", payload=test_payload(now=now))
    sinks = build_sinks(settings)
    try:
        return list(await asyncio.gather(*(_test_one(s, note) for s in sinks.values())))
    finally:
        await asyncio.gather(*(s.aclose() for s in sinks.values()), return_exceptions=True)


def send_test(settings: Settings, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Send a test notification through every configured sink now; one result per sink.

    Bypasses the outbox on purpose: it checks the sinks themselves, and works while the
    database is down.
    """
    return asyncio.run(_send_test(settings, now or datetime.now(UTC)))
