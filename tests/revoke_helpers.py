"""Sessions to revoke: a few users with live, expired and already revoked rows in the reference table."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker import reference
from worker.sessiontable import utcnow


def seed_sessions(
    engine: Engine, users: dict[str, int], *, expired: int = 1, table: str = "sessions"
) -> dict[str, list[str]]:
    """Per user: ``n`` live sessions (ids returned, newest first) plus ``expired`` expired ones."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    live: dict[str, list[str]] = {}
    for user, n in users.items():
        live[user] = []
        for i in range(n + expired):
            sid = f"{user}-{uuid.uuid4().hex[:12]}"
            is_live = i < n
            rows.append(
                {
                    "id": sid,
                    "token_hash": hashlib.sha256(sid.encode()).digest(),
                    "user_id": user,
                    "created_at": now - timedelta(minutes=10 + i),
                    "last_activity_at": now - timedelta(minutes=i),
                    "expires_at": now + timedelta(days=1) if is_live else now - timedelta(hours=1),
                    "ip": "192.0.2.10",
                    "user_agent": "pytest",
                }
            )
            if is_live:
                live[user].append(sid)
    with engine.begin() as conn:
        reference.create_reference_table(conn, table)
        conn.execute(sa.insert(reference.reference_table(table)), rows)
    return live


def live_ids(engine: Engine, user: str, table: str = "sessions") -> set[str]:
    """Ids of the user's sessions that are neither expired nor revoked."""
    t = reference.reference_table(table)
    now = utcnow()
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(t.c.id).where(t.c.user_id == user, t.c.expires_at > now, t.c.revoked_at.is_(None))
            ).scalars()
        )


def all_ids(engine: Engine, user: str, table: str = "sessions") -> set[str]:
    t = reference.reference_table(table)
    with engine.connect() as conn:
        return set(conn.execute(sa.select(t.c.id).where(t.c.user_id == user)).scalars())
