"""Sign-out-other-devices end to end: the API over HTTP, a real Celery worker, Redis, PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tasks import revoke
from tests.acceptance.stack import READ_TOKEN, Stack, stack, wait_until
from tests.conftest import REDIS_URL, RUN_ID, _create_database, _drop_database, _url_for
from tests.faults.services import PrivateRedis
from tests.revoke_helpers import all_ids, live_ids, seed_sessions
from worker import db, models
from worker.settings import Settings

pytestmark = pytest.mark.acceptance
#: the beat runs only the outbox sweep, quickly; every other job waits an hour
QUIET_BEAT = {
    "SESSIONKEEPER_REVOKE__OUTBOX_SCHEDULE": "1s",
    "SESSIONKEEPER_REVOKE__OUTBOX_DELAY": "1s",
    "SESSIONKEEPER_PURGE__SCHEDULE": "1h",
    "SESSIONKEEPER_STATS__SCHEDULE": "1h",
    "SESSIONKEEPER_ANOMALY__SCHEDULE": "1h",
}


def _database(pg_template: str) -> str:
    name = f"sk_rv_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _create_database(name, template=pg_template)
    return name


def wait_job(s: Stack, job_id: str, timeout: float = 30) -> dict[str, Any]:
    with s.client(READ_TOKEN) as client:

        def done() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed") else None

        try:
            result: dict[str, Any] = wait_until(done, timeout=timeout, what=f"job {job_id}")
        except AssertionError:
            raise AssertionError(f"{client.get(f'/v1/jobs/{job_id}').json()}\n{s.log('worker')}") from None
        return result


@pytest.fixture(scope="module")
def shared(pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One database, one worker (2 processes) and one API for the tests that can share them."""
    name = _database(pg_template)
    url = _url_for(name)
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    engine = db.make_engine(url)
    users = {"others": 4, "all": 3, "idem": 2, "victim": 2, "intruder": 1, "dup": 6, "cli": 2}
    live = seed_sessions(engine, users)
    workdir = tmp_path_factory.mktemp("revoke-stack")
    env = {"SESSIONKEEPER_DATABASE__URL": url, "SESSIONKEEPER_BROKER__URL": REDIS_URL}
    try:
        with stack(workdir, env) as s:
            s.start_worker(concurrency=2)
            s.start_api()
            settings = Settings(database={"url": url}, broker={"url": REDIS_URL})
            yield {
                "stack": s,
                "engine": engine,
                "live": live,
                "settings": settings,
                "redis": broker,
                "env": env,
            }
    finally:
        engine.dispose()
        _drop_database(name)
        broker.flushdb()
        broker.close()


def test_revoke_others_end_to_end_with_event(shared: dict[str, Any]) -> None:
    s, engine, live = shared["stack"], shared["engine"], shared["live"]
    keep = live["others"][0]
    sub = shared["redis"].pubsub()
    sub.subscribe("sessionkeeper:revocations")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    with s.client() as client:
        started = time.monotonic()
        r = client.post(
            "/v1/users/others/sessions/revoke", json={"keep_session_id": keep, "reason": "lost phone"}
        )
        accepted_ms = (time.monotonic() - started) * 1000
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["status_url"] == f"/v1/jobs/{body['job_id']}"
        job = wait_job(s, body["job_id"])
        assert job["status"] == "succeeded" and job["revoked_count"] == 3, job
        assert job["keep_session_id"] == keep and job["user_id"] == "others"
        assert live_ids(engine, "others") == {keep}
        sessions = client.get("/v1/users/others/sessions").json()
        assert [x["id"] for x in sessions] == [keep]
        assert set(sessions[0]) == {"id", "created_at", "last_activity_at", "expires_at", "ip", "user_agent"}
    message = sub.get_message(timeout=10)
    while message is not None and message["type"] != "message":
        message = sub.get_message(timeout=10)
    assert message is not None, "no revocation event"
    event = json.loads(message["data"])
    assert event["job_id"] == body["job_id"] and event["user_id"] == "others"
    assert sorted(event["session_ids"]) == sorted(live["others"][1:])
    sub.close()
    assert accepted_ms < 2000


def test_revoke_all_end_to_end(shared: dict[str, Any]) -> None:
    s, engine = shared["stack"], shared["engine"]
    with s.client() as client:
        r = client.post("/v1/users/all/sessions/revoke")
        assert r.status_code == 202, r.text
    job = wait_job(s, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["revoked_count"] == 3 and job["keep_session_id"] is None
    assert live_ids(engine, "all") == set()
    assert len(all_ids(engine, "all")) == 4  # soft-revoked rows stay for the purge; the expired one too


def test_idempotency_key_replay_and_conflict(shared: dict[str, Any]) -> None:
    s, engine = shared["stack"], shared["engine"]
    key = {"Idempotency-Key": f"req-{uuid.uuid4()}"}
    with s.client() as client:
        first = client.post("/v1/users/idem/sessions/revoke", json={"reason": "r"}, headers=key)
        replay = client.post("/v1/users/idem/sessions/revoke", json={"reason": "r"}, headers=key)
        assert first.status_code == replay.status_code == 202
        assert replay.json()["job_id"] == first.json()["job_id"]
        conflict = client.post("/v1/users/idem/sessions/revoke", json={"reason": "other"}, headers=key)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "conflict"
    assert wait_job(s, first.json()["job_id"])["revoked_count"] == 2
    with engine.connect() as conn:
        t = models.revocation_jobs
        count = conn.execute(sa.select(sa.func.count()).where(t.c.idempotency_key == key["Idempotency-Key"]))
        assert count.scalar() == 1


def test_keep_id_of_another_user_fails_and_revokes_nothing(shared: dict[str, Any]) -> None:
    s, engine, live = shared["stack"], shared["engine"], shared["live"]
    with s.client() as client:
        r = client.post("/v1/users/victim/sessions/revoke", json={"keep_session_id": live["intruder"][0]})
        assert r.status_code == 202
    job = wait_job(s, r.json()["job_id"])
    assert job["status"] == "failed" and "not a session of this user" in job["error"]
    assert live_ids(engine, "victim") == set(live["victim"])
    assert live_ids(engine, "intruder") == set(live["intruder"])


def test_duplicate_delivery_has_one_effect(shared: dict[str, Any]) -> None:
    _s, engine, settings = shared["stack"], shared["engine"], shared["settings"]
    sub = shared["redis"].pubsub()
    sub.subscribe("sessionkeeper:revocations")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    job_id = revoke.submit_job(engine, settings, user_id="dup").job["job_id"]
    for _ in range(3):  # the same message three times, as a redelivery or a re-publish would
        assert revoke.publish_job(settings, job_id)
    runs = models.job_runs

    def outcomes() -> list[str] | None:
        with engine.connect() as conn:
            got = sorted(conn.execute(sa.select(runs.c.outcome).where(runs.c.task_id == job_id)).scalars())
        return got if len(got) == 3 and "running" not in got else None

    assert wait_until(outcomes, timeout=30, what="three deliveries") == ["skipped", "skipped", "succeeded"]
    assert revoke.get_job(engine, job_id)["revoked_count"] == 6
    # The event follows the run's record by a moment: wait for the first, then for any more.
    events: list[Any] = []
    deadline = time.monotonic() + 15  # until the first event; then 2 s more for duplicates
    while time.monotonic() < deadline:
        m = sub.get_message(timeout=0.5)
        if m is not None and m["type"] == "message" and json.loads(m["data"])["job_id"] == job_id:
            events.append(m)
            deadline = min(deadline, time.monotonic() + 2)
    assert len(events) == 1
    sub.close()


def test_cli_revoke_through_the_worker_and_wait(shared: dict[str, Any]) -> None:
    from tests.helpers import cli_json

    job = cli_json("revoke", "cli", "--wait", "--timeout", "30", env=shared["env"])
    assert job["status"] == "succeeded" and job["revoked_count"] == 2
    assert live_ids(shared["engine"], "cli") == set()


def test_auth_over_http(shared: dict[str, Any]) -> None:
    s = shared["stack"]
    with s.client("wrong") as anonymous:
        r = anonymous.post("/v1/users/x/sessions/revoke")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    with s.client(READ_TOKEN) as reader:
        r = reader.post("/v1/users/x/sessions/revoke")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert reader.get("/v1/alerts").json() == []
        assert reader.get("/v1/stats").status_code == 404
        assert reader.get("/readyz").json()["status"] == "ready"


def test_broker_down_when_the_request_arrives_then_up(pg_url: str, tmp_path: Path) -> None:
    engine = db.get_engine(Settings(database={"url": pg_url}))
    live = seed_sessions(engine, {"late": 3, "later": 2})
    broker = PrivateRedis(tmp_path / "redis")  # not started: the broker is down
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_BROKER__URL": broker.url(), **QUIET_BEAT}
    try:
        with stack(tmp_path, env) as s:
            s.start_api()
            with s.client() as client:
                started = time.monotonic()
                r = client.post("/v1/users/late/sessions/revoke", json={"keep_session_id": live["late"][0]})
                seconds = time.monotonic() - started
                assert r.status_code == 202, r.text
                assert seconds < 5
                job_id = r.json()["job_id"]
                started = time.monotonic()
                second = client.post("/v1/users/later/sessions/revoke")
                assert second.status_code == 202
                assert time.monotonic() - started < 1  # the outage is remembered: no wait on retries
                assert client.get("/readyz").status_code == 503
                assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
            broker.start()
            s.start_worker(concurrency=1)
            s.start_beat()
            job = wait_job(s, job_id, timeout=40)
            assert job["status"] == "succeeded" and job["revoked_count"] == 2, s.log("beat")
            assert live_ids(engine, "late") == {live["late"][0]}
            assert wait_job(s, second.json()["job_id"])["revoked_count"] == 2
    finally:
        broker.stop()


def test_worker_killed_mid_job_completes_after_restart(pg_url: str, tmp_path: Path) -> None:
    broker = PrivateRedis(
        tmp_path / "redis"
    )  # a queue of its own: the module's shared worker must not take it
    broker.start()
    settings = Settings(database={"url": pg_url}, broker={"url": broker.url()})
    engine = db.get_engine(settings)
    seed_sessions(engine, {"crash": 5})
    env = {
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_BROKER__URL": broker.url(),
        "SESSIONKEEPER_WORKER__SOFT_TIME_LIMIT": "3s",
        "SESSIONKEEPER_WORKER__TIME_LIMIT": "4s",
        "SESSIONKEEPER_PURGE__MAX_RUN_SECONDS": "1s",
        **QUIET_BEAT,
    }
    t = models.revocation_jobs
    try:
        with stack(tmp_path, env) as s:
            s.start_worker(concurrency=1)
            s.start_beat()
            # Hold the user's rows so the job blocks inside its revocation transaction.
            with engine.connect() as blocker:
                tx = blocker.begin()
                blocker.execute(sa.text("SELECT id FROM sessions WHERE user_id = 'crash' FOR UPDATE"))
                job_id = revoke.submit_job(engine, settings, user_id="crash").job["job_id"]
                assert revoke.publish_job(settings, job_id)

                def running() -> bool:
                    with engine.connect() as conn:
                        status = conn.execute(sa.select(t.c.status).where(t.c.id == job_id)).scalar()
                        return status == "running"

                wait_until(running, timeout=20, what="job running")
                time.sleep(0.3)
                s.kill("worker")  # SIGKILL to the whole worker: no ack, no cleanup
                tx.rollback()
            assert revoke.get_job(engine, job_id)["status"] == "running"
            s.start_worker(concurrency=1)
            job = revoke.wait_for(engine, job_id, timeout=40)
            assert job["status"] == "succeeded" and job["revoked_count"] == 5, s.log("worker") + s.log("beat")
            assert live_ids(engine, "crash") == set()
            with engine.connect() as conn:
                assert conn.execute(sa.select(t.c.attempts).where(t.c.id == job_id)).scalar() == 2
    finally:
        broker.stop()
