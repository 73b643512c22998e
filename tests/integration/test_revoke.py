"""Revocation jobs on real databases: the statement, the guarded states, idempotency, the sweep."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa

from tasks import revoke
from tests.revoke_helpers import all_ids, live_ids, seed_sessions
from worker import db, models
from worker.errors import Conflict, InvalidInput, JobFailed
from worker.sessiontable import utcnow

pytestmark = pytest.mark.integration
jobs = models.revocation_jobs


def _setup(make_settings, url, **extra):  # type: ignore[no-untyped-def]
    settings = make_settings(url, sessions={"profile": "sessionkeeper"}, **extra)
    engine = db.get_engine(settings)
    live = seed_sessions(engine, {"alice": 4, "bob": 2})
    return settings, engine, live


def _run(engine, settings, **kw):  # type: ignore[no-untyped-def]
    job = revoke.submit_job(engine, settings, **kw).job
    return revoke.run_job(engine, settings, job_id=job["job_id"], publish_events=False), job["job_id"]


def test_revoke_others_marks_all_but_kept_and_ignores_expired(make_settings, any_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, live = _setup(make_settings, any_url)
    before_all = all_ids(engine, "alice")
    result, job_id = _run(engine, settings, user_id="alice", keep_session_id=live["alice"][0])
    assert result["status"] == "succeeded" and result["revoked_count"] == 3
    assert live_ids(engine, "alice") == {live["alice"][0]}
    assert all_ids(engine, "alice") == before_all  # marked revoked, not deleted
    assert live_ids(engine, "bob") == set(live["bob"])
    job = revoke.get_job(engine, job_id)
    assert job["status"] == "succeeded" and job["revoked_count"] == 3 and job["finished_at"] is not None
    # the expired row kept its NULL revoked_at: expired sessions are not touched
    t = sa.table("sessions", sa.column("revoked_at"), sa.column("expires_at"), sa.column("user_id"))
    with engine.connect() as conn:
        untouched = conn.execute(
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.user_id == "alice", t.c.revoked_at.is_(None), t.c.expires_at < utcnow())
        ).scalar()
    assert untouched == 1


def test_revoke_all_deletes_when_the_mapping_has_no_revoked_column(make_settings, any_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(any_url, sessions={"profile": "sessionkeeper", "revoked": ""})
    engine = db.get_engine(settings)
    live = seed_sessions(engine, {"alice": 3, "bob": 1})
    result, _ = _run(engine, settings, user_id="alice")
    assert result["revoked_count"] == 3
    assert len(all_ids(engine, "alice")) == 1  # only the expired row is left
    assert live_ids(engine, "bob") == set(live["bob"])


def test_keep_id_of_another_user_fails_and_revokes_nothing(make_settings, any_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, live = _setup(make_settings, any_url)
    job = revoke.submit_job(engine, settings, user_id="alice", keep_session_id=live["bob"][0]).job
    with pytest.raises(JobFailed):
        revoke.run_job(engine, settings, job_id=job["job_id"], publish_events=False)
    failed = revoke.get_job(engine, job["job_id"])
    assert failed["status"] == "failed" and "not a session of this user" in failed["error"]
    assert failed["revoked_count"] == 0
    assert live_ids(engine, "alice") == set(live["alice"])


def test_duplicate_delivery_is_a_noop_and_a_lost_run_is_redone(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, _live = _setup(make_settings, pg_url)
    job_id = revoke.submit_job(engine, settings, user_id="alice").job["job_id"]
    # A worker claimed the job and died before its transaction committed: status running.
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(status="running", attempts=1))
    first = revoke.run_job(engine, settings, job_id=job_id, publish_events=False)
    assert first["status"] == "succeeded" and first["revoked_count"] == 4
    again = revoke.run_job(engine, settings, job_id=job_id, publish_events=False)
    assert again["noop"] is True and again["status"] == "succeeded"
    job = revoke.get_job(engine, job_id)
    assert job["revoked_count"] == 4
    with engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.attempts).where(jobs.c.id == job_id)).scalar() == 2


def test_a_job_lost_too_often_ends_failed(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, live = _setup(make_settings, pg_url, revoke={"max_attempts": 2})
    job_id = revoke.submit_job(engine, settings, user_id="alice").job["job_id"]
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(status="running", attempts=2))
    with pytest.raises(JobFailed, match="gave up after 2 attempts"):
        revoke.run_job(engine, settings, job_id=job_id, publish_events=False)
    assert revoke.get_job(engine, job_id)["status"] == "failed"
    assert live_ids(engine, "alice") == set(live["alice"])


def test_idempotency_key_replay_and_conflict(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, _live = _setup(make_settings, pg_url)
    first = revoke.submit_job(engine, settings, user_id="alice", idempotency_key="k-1")
    replay = revoke.submit_job(engine, settings, user_id="alice", idempotency_key="k-1")
    assert first.created and not replay.created
    assert replay.job["job_id"] == first.job["job_id"]
    with pytest.raises(Conflict):
        revoke.submit_job(engine, settings, user_id="bob", idempotency_key="k-1")
    with pytest.raises(Conflict):
        revoke.submit_job(engine, settings, user_id="alice", reason="other", idempotency_key="k-1")


def test_bad_ids_are_refused_before_a_job_exists(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        pg_url, sessions={"table": "numbered", "id": "id", "user_id": "user_id", "expires_at": "expires_at"}
    )
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE numbered (id bigint primary key, user_id bigint, expires_at timestamptz)")
        )
    for user, keep in (("abc", None), ("1", "x"), ("99999999999999999999", None)):
        with pytest.raises(InvalidInput):
            revoke.submit_job(engine, settings, user_id=user, keep_session_id=keep)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 0


def test_outbox_sweep_republishes_unpublished_and_dead_jobs(make_settings, pg_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, _live = _setup(
        make_settings, pg_url, broker={"url": redis_url}, revoke={"outbox_delay": "1s"}
    )
    fresh = revoke.submit_job(engine, settings, user_id="alice").job["job_id"]
    old = revoke.submit_job(engine, settings, user_id="bob").job["job_id"]
    dead = revoke.submit_job(engine, settings, user_id="carol").job["job_id"]
    published = revoke.submit_job(engine, settings, user_id="dave").job["job_id"]
    long_ago = utcnow() - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == old).values(created_at=long_ago))
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == dead)
            .values(status="running", started_at=long_ago, created_at=long_ago)
        )
        conn.execute(
            sa.update(jobs).where(jobs.c.id == published).values(created_at=long_ago, published_at=utcnow())
        )
    figures = revoke.sweep_outbox(engine, settings)
    assert figures == {"stale": 2, "republished": 2, "publish_failed": 0}
    client = redis.Redis.from_url(redis_url)
    messages = [json.loads(m) for m in client.lrange("sessionkeeper", 0, -1)]
    assert sorted(m["headers"]["id"] for m in messages) == sorted([old, dead])
    assert all(m["headers"]["task"] == "sessionkeeper.revoke" for m in messages)
    assert fresh not in {m["headers"]["id"] for m in messages}
    # published now: the next sweep leaves them alone
    assert revoke.sweep_outbox(engine, settings)["stale"] == 0


def test_outbox_sweep_with_the_broker_down_keeps_jobs_queued(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, _live = _setup(
        make_settings, pg_url, broker={"url": "redis://127.0.0.1:1/0"}, revoke={"outbox_delay": "0s"}
    )
    job_id = revoke.submit_job(engine, settings, user_id="alice").job["job_id"]
    assert revoke.publish_job(settings, job_id) is False
    figures = revoke.sweep_outbox(engine, settings)
    assert figures["republished"] == 0 and figures["publish_failed"] == 1
    assert revoke.get_job(engine, job_id)["status"] == "queued"


def test_event_lists_the_revoked_ids(make_settings, pg_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    settings, engine, live = _setup(make_settings, pg_url, broker={"url": redis_url})
    client = redis.Redis.from_url(redis_url)
    sub = client.pubsub()
    sub.subscribe(settings.revoke.event_channel)
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    job_id = revoke.submit_job(engine, settings, user_id="bob", keep_session_id=live["bob"][1]).job["job_id"]
    result = revoke.run_job(engine, settings, job_id=job_id)
    assert result["event_published"] is True
    event = json.loads(sub.get_message(timeout=5)["data"])
    assert event == {"user_id": "bob", "session_ids": [live["bob"][0]], "job_id": job_id}
    sub.close()


def test_cli_revoke_inline_job_and_errors(sqlite_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import cli, cli_json
    from worker.settings import Settings

    engine = db.get_engine(Settings(database={"url": sqlite_url}))
    live = seed_sessions(engine, {"carol": 3, "dan": 1})
    env = {"SESSIONKEEPER_DATABASE__URL": sqlite_url, "SESSIONKEEPER_BROKER__URL": redis_url}
    done = cli_json("revoke", "carol", "--keep", live["carol"][0], "--reason", "cli", "--inline", env=env)
    assert done["status"] == "succeeded" and done["revoked_count"] == 2
    assert cli_json("job", done["job_id"], env=env)["revoked_count"] == 2
    failed = cli_json("revoke", "carol", "--keep", live["dan"][0], "--inline", env=env, expect=1)
    assert failed["status"] == "failed" and "not a session of this user" in failed["error"]
    missing = cli("job", "no-such-job", env=env)
    assert missing.returncode == 1 and "no revocation job" in missing.stderr
    no_token = cli("api", "--port", "1", env=env)
    assert no_token.returncode == 2 and "api.tokens" in no_token.stderr
    assert "Traceback" not in no_token.stderr + missing.stderr
