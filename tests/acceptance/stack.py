"""Real processes for acceptance tests: Celery worker, beat and the API server, sharing one environment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.faults.services import free_port
from tests.helpers import BIN

REVOKE_TOKEN = "test-revoke-token-" + uuid.uuid4().hex
READ_TOKEN = "test-read-token-" + uuid.uuid4().hex


def tokens_env() -> str:
    return json.dumps(
        [
            {"name": "ops", "sha256": hashlib.sha256(REVOKE_TOKEN.encode()).hexdigest(), "scope": "revoke"},
            {"name": "dash", "sha256": hashlib.sha256(READ_TOKEN.encode()).hexdigest(), "scope": "read"},
        ]
    )


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Stack:
    """Processes sharing one environment (database, broker, tokens); all stopped by ``close``."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SESSIONKEEPER_") or k.startswith("SESSIONKEEPER_TEST")
        }
        self.env.update(
            {
                "SESSIONKEEPER_API__TOKENS": tokens_env(),
                "SESSIONKEEPER_LOGGING__FORMAT": "json",
                "SESSIONKEEPER_WORKER__READY_FILE": str(workdir / "worker.ready"),
                "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(workdir / "worker.heartbeat"),
                **env,
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api_url = ""

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [str(BIN), *args],
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches the pool children too
            )
        self.procs[name] = proc
        return proc

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        ready = Path(self.env["SESSIONKEEPER_WORKER__READY_FILE"])
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            "worker",
            "worker",
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"revoke-{uuid.uuid4().hex[:6]}@localhost",
        )
        wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=30, what="worker ready")
        assert proc.poll() is None, self.log("worker")
        return proc

    def start_beat(self) -> subprocess.Popen[bytes]:
        return self._spawn("beat", "beat", "--schedule-file", str(self.workdir / "beat-schedule"))

    def start_api(self) -> str:
        port = free_port()
        proc = self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, self.log("api")
            return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200

        wait_until(up, timeout=30, what="API /healthz")
        return self.api_url

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def client(self, token: str = REVOKE_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=15)


@contextlib.contextmanager
def stack(workdir: Path, env: dict[str, str]) -> Iterator[Stack]:
    s = Stack(workdir, env)
    try:
        yield s
    finally:
        s.close()
