"""The HTTP API in-process (real PostgreSQL and Redis): auth, errors, limits, reads, OpenAPI."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.acceptance.stack import wait_until
from tests.revoke_helpers import seed_sessions
from worker import db, models
from worker.api import create_app
from worker.errors import ConfigurationError
from worker.sessiontable import utcnow

pytestmark = pytest.mark.integration
TOKEN, READ = "tok-revoke-1", "tok-read-1"
TOKENS = [
    {"name": "ops", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scope": "revoke"},
    {"name": "dash", "sha256": hashlib.sha256(READ.encode()).hexdigest(), "scope": "read"},
]


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(make_settings, pg_url, redis_url) -> Iterator[tuple[TestClient, Any, dict[str, list[str]]]]:  # type: ignore[no-untyped-def]
    settings = make_settings(
        pg_url, broker={"url": redis_url}, api={"tokens": TOKENS, "max_body_bytes": 1024}
    )
    engine = db.get_engine(settings)
    live = seed_sessions(engine, {"alice": 3})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, engine, live


def test_refuses_to_start_without_a_token_unless_insecure_dev(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="at least one token"):
        create_app(make_settings(pg_url))
    app = create_app(make_settings(pg_url, api={"insecure_dev": True}))
    with TestClient(app) as client:
        assert client.get("/v1/alerts").status_code == 200  # no token needed in insecure mode


def test_tokens_and_scopes(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, auth("nope")):
        r = client.get("/v1/alerts", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/users/alice/sessions/revoke", headers=auth(READ))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.get("/v1/alerts", headers=auth(READ)).json() == []
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}


def test_post_accepts_and_publishes(api, redis_url) -> None:  # type: ignore[no-untyped-def]
    import redis

    client, engine, live = api
    r = client.post(
        "/v1/users/alice/sessions/revoke", json={"keep_session_id": live["alice"][0]}, headers=auth()
    )
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    assert redis.Redis.from_url(redis_url).llen("sessionkeeper") == 1
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(READ)).json()
    assert job["status"] == "queued" and job["keep_session_id"] == live["alice"][0]
    t = models.revocation_jobs

    def published() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.select(t.c.published_at).where(t.c.id == job_id)).scalar() is not None

    assert wait_until(published, timeout=5, what="published_at recorded")  # batched, off the request path


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/v1/jobs/not-a-uuid", {}, 422, "invalid_request"),
        ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000", {}, 404, "not_found"),
        ("post", "/v1/users/alice/sessions/revoke", {"content": b"{nope"}, 422, "invalid_request"),
        ("post", "/v1/users/alice/sessions/revoke", {"json": {"keep": 1}}, 422, "invalid_request"),
        ("post", "/v1/users/alice/sessions/revoke", {"json": {"reason": "a\x00b"}}, 422, "invalid_request"),
        ("post", "/v1/users/alice/sessions/revoke", {"json": {"reason": "x" * 2000}}, 413, "too_large"),
        (
            "post",
            "/v1/users/alice/sessions/revoke",
            {"headers": {"Idempotency-Key": "a b"}},
            422,
            "invalid_request",
        ),
        ("post", "/v1/users/a%00b/sessions/revoke", {}, 422, "invalid_request"),
        ("get", "/v1/users/" + "u" * 300 + "/sessions", {}, 422, "invalid_request"),
        ("get", "/v1/users/alice/sessions?limit=0", {}, 422, "invalid_request"),
        ("get", "/v1/users/alice/stats", {}, 404, "not_found"),
        ("get", "/v1/stats", {}, 404, "not_found"),
        ("get", "/v1/nothing", {}, 404, "not_found"),
        ("delete", "/v1/stats", {}, 405, "method_not_allowed"),
    ],
)
def test_errors_are_json_with_the_right_status(api, method, path, kwargs, status, code) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    headers = {**auth(), **kwargs.pop("headers", {})}
    r = client.request(method.upper(), path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert set(r.json()["error"]) == {"code", "message"}


def test_chunked_body_over_the_limit_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api

    def chunks() -> Iterator[bytes]:
        yield b'{"reason": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/v1/users/alice/sessions/revoke", content=chunks(), headers=auth())
    assert r.status_code == 413


def test_sessions_stats_and_alerts_reads(api, make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    from tasks.stats import refresh_stats

    client, engine, live = api
    sessions = client.get("/v1/users/alice/sessions", headers=auth(READ)).json()
    assert [s["id"] for s in sessions] == live["alice"]  # newest activity first, expired one left out
    assert "token_hash" not in sessions[0]
    refresh_stats(engine, make_settings(pg_url))  # what the stats job stores is what the API serves
    stats = client.get("/v1/stats", headers=auth(READ)).json()
    assert stats["active"] == 3 and stats["expired_pending"] == 1
    assert client.get("/v1/users/alice/stats", headers=auth(READ)).json()["active_sessions"] == 3
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(models.alerts).values(
                fingerprint="f1",
                rule="user_burst",
                entity="alice",
                severity="warning",
                state="resolved",
                first_seen=now - timedelta(minutes=5),
                last_seen=now,
                details={"observed": 40},
            )
        )
    assert client.get("/v1/alerts", headers=auth(READ)).json() == []  # open ones by default
    alerts = client.get("/v1/alerts?state=all", headers=auth(READ)).json()
    assert [a["rule"] for a in alerts] == ["user_burst"] and alerts[0]["details"] == {"observed": 40}
    assert alerts[0]["deliveries"] == {"sent": 0, "pending": 0, "failed": 0}
    later = (now + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/v1/alerts?state=all&since={later}", headers=auth(READ)).json() == []


def test_session_ids_as_fingerprints(make_settings, pg_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        pg_url, broker={"url": redis_url}, api={"tokens": TOKENS, "session_ids": "fingerprint"}
    )
    live = seed_sessions(db.get_engine(settings), {"bob": 1})
    with TestClient(create_app(settings)) as client:
        (item,) = client.get("/v1/users/bob/sessions", headers=auth(READ)).json()
    assert item["id"] == "sha256:" + hashlib.sha256(live["bob"][0].encode()).hexdigest()[:32]


def test_readyz_names_what_is_down(make_settings, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(pg_url, broker={"url": "redis://127.0.0.1:1/0"}, api={"tokens": TOKENS})
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["error"]["code"] == "not_ready" and "broker" in body["error"]["message"]
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("unreachable")


def test_database_down_is_503_not_500(make_settings, redis_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        "postgresql://postgres@127.0.0.1:1/none", broker={"url": redis_url}, api={"tokens": TOKENS}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post("/v1/users/alice/sessions/revoke", headers=auth())
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
        assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth()).status_code == 503


def test_openapi_describes_every_endpoint_and_error(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/users/{user_id}/sessions/revoke",
        "/v1/jobs/{job_id}",
        "/v1/users/{user_id}/sessions",
        "/v1/users/{user_id}/stats",
        "/v1/stats",
        "/v1/alerts",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    post = paths["/v1/users/{user_id}/sessions/revoke"]["post"]
    assert {"202", "400", "401", "403", "409", "413", "422", "503"} <= set(post["responses"])
    assert post["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "RevokeRequest" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_insecure_mode_is_announced(make_settings, pg_url, capsys) -> None:  # type: ignore[no-untyped-def]
    from worker.observability import configure_logging

    configure_logging(force=True)  # a handler on this test's (captured) stderr
    create_app(make_settings(pg_url, api={"insecure_dev": True}))
    assert "api_insecure_dev_mode" in capsys.readouterr().err
