"""Benchmark the revocation API by hand: sustained POST rate, 202 latency at a fixed rate, POST-to-revoked.

Starts its own API server (uvicorn, one process) and one Celery worker process against a scratch
PostgreSQL database and a Redis database, and prints each figure beside the same measurement of
GET /healthz (the HTTP stack's floor) taken in the same run.

    .venv/bin/python bench/api/bench.py [--rate 200] [--seconds 15] [--redis redis://127.0.0.1:6379/8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from worker import db, migrate, reference  # noqa: E402
from worker.sessiontable import utcnow  # noqa: E402

BIN = Path(sys.executable).with_name("sessionkeeper")
TOKEN = "bench-" + uuid.uuid4().hex


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def seed(url: str, users: int, per_user: int) -> None:
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    now = utcnow()
    table = reference.reference_table()
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        rows = []
        for u in range(users):
            for i in range(per_user):
                sid = f"b{u}-{i}"
                rows.append(
                    {
                        "id": sid,
                        "token_hash": hashlib.sha256(sid.encode()).digest(),
                        "user_id": f"user{u}",
                        "created_at": now - timedelta(hours=i),
                        "last_activity_at": now - timedelta(minutes=i),
                        "expires_at": now + timedelta(days=7),
                        "ip": "192.0.2.1",
                        "user_agent": "bench",
                    }
                )
            if len(rows) >= 5000:
                conn.execute(sa.insert(table), rows)
                rows = []
        if rows:
            conn.execute(sa.insert(table), rows)
    engine.dispose()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


class RawResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.body = status, body

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost far less than the server.

    (httpx spends about a millisecond of CPU per request; on two shared cores that would be
    measured as server latency.)
    """

    def __init__(self, base: str, token: str, connections: int = 32) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port, self.token = host, int(port), token
        self.size = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def __aenter__(self) -> RawClient:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()

    async def request(self, method: str, path: str, body: bytes = b"") -> RawResponse:
        reader, writer = await self.idle.get()
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            return RawResponse(int(status_line.split()[1]), payload)
        finally:
            self.idle.put_nowait((reader, writer))

    async def post(self, path: str, json_body: bytes = b"{}") -> RawResponse:
        return await self.request("POST", path, json_body)

    async def get(self, path: str) -> RawResponse:
        return await self.request("GET", path)


class Users:
    """Hands out each seeded user once, so every POST revokes real sessions."""

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> str:
        self.next += 1
        return f"user{self.next - 1}"


async def closed_loop(
    client: httpx.AsyncClient, users: Users, seconds: float, workers: int
) -> tuple[int, float]:
    """As many POSTs as ``workers`` concurrent callers get through: the sustained rate."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            r = await client.post(f"/v1/users/{users.take()}/sessions/revoke")
            assert r.status_code == 202, r.text
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(workers)))
    return done, time.perf_counter() - started


async def open_loop(
    client: RawClient, rate: float, seconds: float, request: Any
) -> tuple[list[float], list[Any]]:
    """Requests sent on a fixed schedule (not waiting for answers): latency as callers see it."""
    latencies: list[float] = []
    results: list[Any] = []
    total = int(rate * seconds)
    start = time.perf_counter()

    async def one(at: float) -> None:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        r = await request(client)
        latencies.append((time.perf_counter() - t0) * 1000)
        results.append((t0, r))

    await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    return latencies, results


def listen(url: str, channel: str, seen: dict[str, float], stop_flag: threading.Event) -> threading.Thread:
    def run() -> None:
        sub = redis.Redis.from_url(url).pubsub()
        sub.subscribe(channel)
        while not stop_flag.is_set():
            message = sub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                seen[json.loads(message["data"])["job_id"]] = time.perf_counter()
        sub.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def main_async(args: argparse.Namespace, api: str) -> dict[str, Any]:
    users = Users()
    async with RawClient(api, TOKEN) as client:
        for _ in range(50):  # warm up: reflection, pools, connections
            await client.get("/healthz")
            await client.post(f"/v1/users/{users.take()}/sessions/revoke")
        report: dict[str, Any] = {}
        n, secs = await closed_loop(client, users, 10, workers=16)
        report["sustained_post_per_s"] = n / secs
        hz, _ = await open_loop(client, args.rate, args.seconds, lambda c: c.get("/healthz"))
        post, results = await open_loop(
            client, args.rate, args.seconds, lambda c: c.post(f"/v1/users/{users.take()}/sessions/revoke")
        )
        assert all(r.status_code == 202 for _, r in results)
        report["healthz"] = (statistics.median(hz), pct(hz, 99))
        report["post"] = (statistics.median(post), pct(post, 99))
        report["users_used"] = users.next
        return report


async def revoked_latency(
    api: str, redis_url: str, rate: float, seconds: float, start_user: int
) -> dict[str, Any]:
    """POST to event (sent right after the revocation commits), one worker, at a rate it sustains."""
    seen: dict[str, float] = {}
    flag = threading.Event()
    thread = listen(redis_url, "sessionkeeper:revocations", seen, flag)
    time.sleep(0.5)
    users = Users()
    users.next = start_user
    async with RawClient(api, TOKEN) as client:
        _, results = await open_loop(
            client, rate, seconds, lambda c: c.post(f"/v1/users/{users.take()}/sessions/revoke")
        )
    sent = {r.json()["job_id"]: t0 for t0, r in results}
    deadline = time.monotonic() + 60
    while len(set(sent) & set(seen)) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    flag.set()
    thread.join()
    gone = [(seen[j] - t0) * 1000 for j, t0 in sent.items() if j in seen]
    return {"count": len(gone), "of": len(sent), "p50": statistics.median(gone), "p99": pct(gone, 99)}


def worker_rate(url: str, redis_url: str, ready: Path, seconds: float = 20) -> float:
    """Jobs per second one worker process finishes from a full queue; then the rest is dropped."""
    for _ in range(300):
        if ready.exists():
            break
        time.sleep(0.1)
    engine = db.make_engine(url)
    query = sa.text("SELECT count(*) FROM sessionkeeper.revocation_jobs WHERE status = 'succeeded'")
    with engine.connect() as conn:
        before = conn.execute(query).scalar_one()
    time.sleep(seconds)
    with engine.connect() as conn:
        after = conn.execute(query).scalar_one()
    engine.dispose()
    redis.Redis.from_url(redis_url).delete("sessionkeeper")  # the backlog is not needed any more
    return float(after - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--revoke-rate", type=float, default=20, help="rate for the POST-to-revoked phase")
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--api-workers", type=int, default=1, help="sessionkeeper api --workers")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args()

    admin = sa.create_engine(db.normalize_url(args.pg), isolation_level="AUTOCOMMIT")
    name = f"revoke_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = db.normalize_url(args.pg).set(database=name).render_as_string(hide_password=False)
    workdir = Path(tempfile.mkdtemp(prefix="revoke-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        seed(url, args.users, 4)
        redis.Redis.from_url(args.redis).flushdb()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
        env.update(
            {
                "SESSIONKEEPER_DATABASE__URL": url,
                "SESSIONKEEPER_BROKER__URL": args.redis,
                "SESSIONKEEPER_LOGGING__LEVEL": "WARNING",
                "SESSIONKEEPER_LOGGING__FORMAT": "json",
                "SESSIONKEEPER_API__TOKENS": json.dumps(
                    [
                        {
                            "name": "bench",
                            "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                            "scope": "revoke",
                        }
                    ]
                ),
                "SESSIONKEEPER_WORKER__READY_FILE": str(workdir / "ready"),
                "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(workdir / "heartbeat"),
            }
        )
        port = 18000 + os.getpid() % 1000
        procs.append(
            spawn(["api", "--port", str(port), "--workers", str(args.api_workers)], env, workdir / "api.log")
        )
        api = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{api}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        report = asyncio.run(main_async(args, api))
        # The worker starts only now, so the phases above measure the API alone.
        procs.append(
            spawn(
                ["worker", "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env,
                workdir / "worker.log",
            )
        )
        report["worker_jobs_per_s"] = worker_rate(url, args.redis, workdir / "ready")
        time.sleep(1)
        report["revoked"] = asyncio.run(
            revoked_latency(api, args.redis, args.revoke_rate, 10, report["users_used"] + 10)
        )
    finally:
        for proc in procs:
            stop(proc)
        db.dispose_engines(close=True)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        redis.Redis.from_url(args.redis).flushdb()

    hz, post = report["healthz"], report["post"]
    rv = report["revoked"]
    print(f"sustained POST (16 concurrent callers): {report['sustained_post_per_s']:.0f} req/s")
    print(f"at {args.rate:.0f} req/s for {args.seconds:.0f} s (open loop):")
    print(f"  GET /healthz (baseline)  p50 {hz[0]:6.1f} ms  p99 {hz[1]:6.1f} ms")
    print(
        f"  POST revoke -> 202       p50 {post[0]:6.1f} ms  p99 {post[1]:6.1f} ms"
        f"  (x{post[0] / hz[0]:.1f} / x{post[1] / hz[1]:.1f} of baseline)"
    )
    print(f"one worker process drains {report['worker_jobs_per_s']:.0f} jobs/s")
    print(
        f"POST to revoked (event after commit), {args.revoke_rate:.0f} req/s, one worker: "
        f"p50 {rv['p50']:.0f} ms  p99 {rv['p99']:.0f} ms  ({rv['count']}/{rv['of']} jobs)"
    )


if __name__ == "__main__":
    main()
