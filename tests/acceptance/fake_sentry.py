"""A real HTTP server that accepts Sentry envelopes, so tests see what the SDK really sends."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSentry:
    """Collects envelope items: ``items`` is a list of (item type, payload dict)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer._collect(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/42"

    def _collect(self, body: bytes) -> None:
        lines = body.split(b"\n")
        with self._lock:
            self.raw.append(body)
            i = 1  # line 0 is the envelope header
            while i + 1 < len(lines) + 1 and i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                header = json.loads(lines[i])
                payload = lines[i + 1] if i + 1 < len(lines) else b"{}"
                try:
                    self.items.append((header.get("type", ""), json.loads(payload)))
                except ValueError:
                    self.items.append((header.get("type", ""), {}))
                i += 2

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p in self.items if t == kind]

    def __enter__(self) -> FakeSentry:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
