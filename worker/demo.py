"""Synthetic sessions for the demo: skewed users, an expired backlog, and a few suspicious bursts."""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.reference import reference_table

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0",
    "okhttp/4.12.0",
)


@dataclass(frozen=True)
class Seeded:
    users: int
    sessions: int
    expired: int
    revoked: int
    burst_user: str
    burst_ip: str
    burst_sessions: int


def seed(conn: Connection, *, now: datetime, users: int = 3000, seed_value: int = 7) -> Seeded:
    """Fill the reference table with realistic sessions ending at ``now``; deterministic per seed."""
    rng = random.Random(seed_value)
    table = reference_table()
    rows: list[dict[str, Any]] = []
    expired = revoked = 0

    def add(
        user: str,
        created: datetime,
        *,
        ip: str,
        agent: str,
        ttl: timedelta,
        active_for: timedelta | None = None,
        revoked_at: datetime | None = None,
    ) -> None:
        nonlocal expired, revoked
        last = created + (
            active_for if active_for is not None else timedelta(minutes=rng.expovariate(1 / 90))
        )
        last = min(last, now)
        expires = last + ttl
        expired += expires < now
        revoked += revoked_at is not None
        rows.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "token_hash": hashlib.sha256(rng.randbytes(32)).digest(),
                "user_id": user,
                "created_at": created,
                "last_activity_at": last,
                "expires_at": expires,
                "ip": ip,
                "user_agent": agent,
                "revoked_at": revoked_at,
            }
        )

    for n in range(users):
        user = f"u{n:05d}"
        # Pareto-skewed sessions per user: most have 1-3, a few power users dozens.
        count = min(60, int(rng.paretovariate(1.6)))
        home_ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        for _ in range(count):
            # Daily cycle: more logins in the daytime hours of the past 8 days.
            age = timedelta(days=rng.uniform(0, 8))
            created = now - age
            if rng.random() < 0.5 and 1 <= created.hour <= 6:
                created -= timedelta(hours=8)
            ttl = timedelta(days=rng.choice((1, 7, 30)))
            ip = home_ip if rng.random() < 0.8 else f"198.51.100.{rng.randrange(1, 255)}"
            rev = created + timedelta(hours=1) if rng.random() < 0.02 else None
            add(user, created, ip=ip, agent=rng.choice(AGENTS), ttl=ttl, revoked_at=rev)

    # Suspicious: one account gets 40 new sessions in 8 minutes from many addresses.
    burst_user = "u00042"
    for i in range(40):
        add(
            burst_user,
            now - timedelta(minutes=8) + timedelta(seconds=12 * i),
            ip=f"203.0.113.{rng.randrange(1, 255)}",
            agent=AGENTS[4],
            ttl=timedelta(days=30),
            active_for=timedelta(0),
        )
    # Suspicious: twelve different accounts signed in from one address within 6 minutes.
    burst_ip = "192.0.2.66"
    for i in range(12):
        add(
            f"u{1000 + 37 * i:05d}",
            now - timedelta(minutes=6) + timedelta(seconds=25 * i),
            ip=burst_ip,
            agent=AGENTS[0],
            ttl=timedelta(days=7),
            active_for=timedelta(0),
        )

    for start in range(0, len(rows), 2000):
        conn.execute(sa.insert(table), rows[start : start + 2000])
    return Seeded(
        users=users,
        sessions=len(rows),
        expired=expired,
        revoked=revoked,
        burst_user=burst_user,
        burst_ip=burst_ip,
        burst_sessions=40,
    )
