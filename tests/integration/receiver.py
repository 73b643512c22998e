"""A real HTTP server on 127.0.0.1 that records what it receives and answers as scripted."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: a hanging answer is released after this many seconds even if the test forgets
HANG_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    #: never answer (until the receiver closes): a hanging sink
    hang: bool = False
    #: send the body one byte at a time, this many seconds apart: slow, but never silent
    trickle: float = 0.0


HANG = Answer(hang=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        receiver = self.server.receiver
        answer = receiver.next_answer(self.path)
        receiver.record(
            Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        )
        if answer.hang:
            receiver.released.wait(HANG_SECONDS)
            return
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if not answer.trickle:
            self.wfile.write(answer.body)
            return
        for byte in answer.body:
            if receiver.released.wait(answer.trickle):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest output is for failures."""


class Receiver:
    """Webhook receiver. script(path, ...) queues answers; unscripted requests get 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, deque[Answer]] = {}
        self._received: list[Received] = []
        self.released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def script(self, path: str, *answers: Answer | int) -> None:
        with self._lock:
            queue = self._answers.setdefault(path, deque())
            queue.extend(a if isinstance(a, Answer) else Answer(status=a) for a in answers)

    def next_answer(self, path: str) -> Answer:
        with self._lock:
            queue = self._answers.get(path)
            return queue.popleft() if queue else Answer()

    def record(self, item: Received) -> None:
        with self._lock:
            self._received.append(item)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
