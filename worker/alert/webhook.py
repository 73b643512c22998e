"""The webhook sink: JSON (or Slack) body over HTTPS, signed with HMAC-SHA256 and a timestamp.

Header: ``X-Sessionkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
with the sink's secret as the key, so a receiver can check both origin and freshness.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from worker.alert import notification, slack
from worker.alert.notification import Notification
from worker.alert.sink import DeliveryFailed, webhook_kind
from worker.settings import WebhookSink

SIGNATURE_HEADER = "X-Sessionkeeper-Signature"
#: receivers should refuse signatures older (or newer) than this, in seconds
DEFAULT_TOLERANCE_SECONDS = 300
USER_AGENT = "sessionkeeper-alerts/1"
#: bytes of an error answer kept for the delivery row
_ERROR_BODY_BYTES = 200


def sign(secret: str | bytes, body: bytes, *, timestamp: int) -> str:
    """The signature header value for a body sent at a unix timestamp."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str | bytes,
    header: str,
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a signature header is valid for the body and fresh: what a receiver does."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp=timestamp).partition(",v1=")[2]
    # several v1 values are allowed so a receiver can accept old and new secrets while rotating
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def encode(document: dict[str, Any]) -> bytes:
    """Compact, stable JSON bytes: exactly what is signed is what is sent."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After a 429/503 answer asked for, in seconds (delta form only)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def describe_exception(exc: BaseException, *, url: str) -> str:
    """A short reason for a failed request that never repeats the URL (it may hold a token)."""
    text = str(exc).replace(url, "<url>") if url else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def post(client: httpx.AsyncClient, url: str, *, content: bytes, headers: dict[str, str]) -> int:
    """POST and return the status; raise DeliveryFailed for a network error or a non-2xx."""
    try:
        response = await client.post(url, content=content, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(describe_exception(exc, url=url)) from None
    if not 200 <= response.status_code < 300:
        excerpt = response.text[:_ERROR_BODY_BYTES].replace(url, "<url>").strip()
        raise DeliveryFailed(
            f"HTTP {response.status_code}" + (f": {excerpt}" if excerpt else ""),
            status_code=response.status_code,
            retry_after=retry_after_seconds(response),
        )
    return response.status_code


class Webhook:
    """Sends notifications to one configured webhook, as our JSON body or as a Slack message."""

    def __init__(self, config: WebhookSink) -> None:
        self.name = config.name
        self.kind = webhook_kind(config.format)
        self.timeout = config.timeout.total_seconds()
        self._url = config.url.get_secret_value()
        self._secret = config.secret.get_secret_value() if config.secret else None
        self._format = config.format
        # The outbox bounds the whole attempt; httpx's own limits make the common failures
        # (refused, unreachable, silent server) report themselves by name.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False
        )

    def render(self, note: Notification, *, sent_at: datetime) -> bytes:
        """The exact body bytes for a notification."""
        if self._format == "slack":
            return encode(slack.message(note))
        return encode(notification.body(note, sent_at=sent_at))

    async def send(self, note: Notification) -> int | None:
        """POST the signed notification; a 2xx answer is success."""
        now = datetime.now(UTC)
        content = self.render(note, sent_at=now)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Sessionkeeper-Event": note.event,
        }
        if note.delivery_id is not None:
            # the same id on every retry, so a receiver can drop a duplicate we could not confirm
            headers["X-Sessionkeeper-Delivery"] = str(note.delivery_id)
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, content, timestamp=int(now.timestamp()))
        return await post(self._client, self._url, content=content, headers=headers)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
