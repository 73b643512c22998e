"""ASGI middleware for the API: a body-size limit and the request-metrics hook, kept to one pass."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class Limits:
    """Reads at most ``max_body`` bytes (413 beyond) and reports each request to the metrics hook."""

    def __init__(self, app: AsgiApp, *, max_body: int, observe: Callable[..., None] | None) -> None:
        self.app, self.max_body, self.observe = app, max_body, observe

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._read(scope, receive)
            if body is None:
                await too_large(self.max_body)(scope, receive, sending)
                return
            replayed = False

            async def replay() -> MutableMapping[str, Any]:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, sending)
        finally:
            if self.observe is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                self.observe(
                    method=scope["method"], route=route, status=status, seconds=time.perf_counter() - started
                )

    async def _read(self, scope: MutableMapping[str, Any], receive: Receive) -> bytes | None:
        # Bodies here are tiny JSON: buffer them whole, so a too-large one never reaches a handler.
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def too_large(limit: int) -> JSONResponse:
    return error_response(413, "too_large", f"request body over {limit} bytes (api.max_body_bytes)")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status, headers=headers)
