"""Odd rows in the application's table: every job copes, counts them right, and loses nothing.

NULL, far-past and far-future expiries, a 100 kB user agent, addresses that are not IPs, and JSON
user ids that are numbers, strings, objects, arrays or missing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from tasks.anomaly.scan import run_scan
from tasks.purge import purge_sessions
from tasks.revoke import run_job, submit_job
from tasks.stats import latest_snapshot, refresh_stats
from worker import db

pytestmark = pytest.mark.integration

DDL = (
    "CREATE TABLE odd (sid text PRIMARY KEY, data jsonb, expires timestamptz, made timestamptz, "
    "seen timestamptz, addr text, agent text)"
)
USERS: list[Any] = [42, "42", "alice", {"id": 1}, [1, 2], None, True, 3.5]
ODD_ADDRESSES = ["10.0.0.1", "not-an-ip", "", "999.1.1.1", "::1", "2001:db8::1/64"]


def _rows() -> list[dict[str, Any]]:
    rows = []
    expiries = ["1900-01-01T00:00:00Z", None, "9999-12-31T23:59:59Z", "2000-06-01T00:00:00Z"]
    n = 0
    for user in USERS:
        for expires in expiries:
            data = {"passport": {"user": user}} if user is not None else {"passport": {}}
            rows.append(
                {
                    "sid": f"s{n}",
                    "data": json.dumps(data),
                    "expires": expires,
                    "made": "now",
                    "seen": "now",
                    "addr": ODD_ADDRESSES[n % len(ODD_ADDRESSES)],
                    "agent": "x" * 100_000 if n % 5 == 0 else "Mozilla/5.0",
                }
            )
            n += 1
    rows.append(
        {
            "sid": "broken-json",
            "data": json.dumps("just a string"),
            "expires": "9999-01-01T00:00:00Z",
            "made": "now",
            "seen": "now",
            "addr": None,
            "agent": None,
        }
    )
    return rows


def test_every_job_copes_with_odd_rows(pg_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        pg_url,
        sessions={
            "table": "odd",
            "id": "sid",
            "user_id_json": {"column": "data", "path": ["passport", "user"]},
            "expires_at": "expires",
            "created_at": "made",
            "last_activity_at": "seen",
            "ip": "addr",
            "user_agent": "agent",
        },
    )
    engine = db.get_engine(settings)
    rows = _rows()
    with engine.begin() as conn:
        conn.execute(sa.text(DDL))
        conn.execute(
            sa.text(
                "INSERT INTO odd VALUES (:sid, CAST(:data AS jsonb), CAST(:expires AS timestamptz), "
                "CAST(:made AS timestamptz), CAST(:seen AS timestamptz), :addr, :agent)"
            ),
            rows,
        )
    far_past = sum(1 for r in rows if r["expires"] and r["expires"] < "2026")
    live = len(rows) - far_past

    preview = purge_sessions(engine=engine, settings=settings, dry_run=True)
    assert preview.expired_pending == far_past
    done = purge_sessions(engine=engine, settings=settings, trigger="test")
    assert done.deleted == {"expired": far_past}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM odd")).scalar_one() == live  # NULL and 9999 stay

    refresh_stats(engine, settings, trigger="test")
    snap = latest_snapshot(engine)
    assert snap is not None
    assert snap["active"] == live and snap["null_expiry"] == len(USERS)

    scan = run_scan(engine, settings, trigger="test")
    assert scan is not None  # odd addresses and user ids roll up without an error

    # A user id that is the number 42 in JSON and the string "42" are the same text id.
    job = submit_job(engine, settings, user_id="42", source="cli")
    result = run_job(engine, settings, job_id=job.job["job_id"], trigger="test", publish_events=False)
    assert result["status"] == "succeeded"
    assert result["revoked_count"] == 4  # 2 live rows for 42 and 2 for "42"
