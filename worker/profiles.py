"""Built-in column sets for the session tables of common frameworks (and our reference table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    framework: str
    #: mapping keys exactly as in the [sessions] settings section
    columns: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: the id column holds the cookie value itself: never shown raw (the API lists a fingerprint)
    id_is_token: bool = False


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="sessionkeeper",
            framework="sessionkeeper reference table (sessionkeeper migrate --reference-table)",
            columns={
                "table": "sessions",
                "id": "id",
                "user_id": "user_id",
                "expires_at": "expires_at",
                "created_at": "created_at",
                "last_activity_at": "last_activity_at",
                "ip": "ip",
                "user_agent": "user_agent",
                "revoked": "revoked_at",
                "revoked_when": "not_null",
                "time_kind": "timestamptz",
            },
        ),
        Profile(
            name="authjs",
            framework="Auth.js / NextAuth (@auth/pg-adapter)",
            columns={
                "table": "sessions",
                "id": "id",
                "user_id": "userId",
                "expires_at": "expires",
                "time_kind": "timestamptz",
            },
            note="no creation time: creation-rate detection needs a created_at column",
        ),
        Profile(
            name="better-auth",
            framework="Better Auth (PostgreSQL)",
            columns={
                "table": "session",
                "id": "id",
                "user_id": "userId",
                "expires_at": "expiresAt",
                "created_at": "createdAt",
                "last_activity_at": "updatedAt",
                "ip": "ipAddress",
                "user_agent": "userAgent",
                "time_kind": "timestamptz",
            },
        ),
        Profile(
            name="django",
            framework="Django (django.contrib.sessions, USE_TZ=True)",
            columns={
                "table": "django_session",
                "id": "session_key",
                "expires_at": "expire_date",
                "time_kind": "timestamptz",
            },
            note="the user id is inside signed session_data: no per-user stats or revocation",
            id_is_token=True,
        ),
        Profile(
            name="connect-pg-simple",
            framework="express-session with connect-pg-simple",
            columns={
                "table": "session",
                "id": "sid",
                "user_id_json": {"column": "sess", "path": ["passport", "user"]},
                "expires_at": "expire",
                "time_kind": "timestamp",
            },
            note="user id read from sess -> passport -> user (Passport.js)",
            id_is_token=True,
        ),
        Profile(
            name="epic-stack",
            framework="Epic Stack (Prisma Session model on PostgreSQL)",
            columns={
                "table": "Session",
                "id": "id",
                "user_id": "userId",
                "expires_at": "expirationDate",
                "created_at": "createdAt",
                "last_activity_at": "updatedAt",
                "time_kind": "timestamp",
            },
            id_is_token=True,
        ),
        Profile(
            name="lucia",
            framework="Lucia v3 (PostgreSQL adapter)",
            columns={
                "table": "user_session",
                "id": "id",
                "user_id": "user_id",
                "expires_at": "expires_at",
                "time_kind": "timestamptz",
            },
            id_is_token=True,
        ),
        Profile(
            name="rails",
            framework="Rails activerecord-session_store",
            columns={
                "table": "sessions",
                "id": "id",
                "created_at": "created_at",
                "last_activity_at": "updated_at",
                "time_kind": "timestamp",
            },
            note="no expiry and no user column: purge by policy.idle_timeout on updated_at",
        ),
        Profile(
            name="supabase",
            framework="Supabase Auth (auth.sessions)",
            columns={
                "table": "auth.sessions",
                "id": "id",
                "user_id": "user_id",
                "expires_at": "not_after",
                "created_at": "created_at",
                "last_activity_at": "updated_at",
                "ip": "ip",
                "user_agent": "user_agent",
                "time_kind": "timestamptz",
            },
            note="not_after is NULL unless a session time-box is set; NULL never counts as expired",
        ),
    )
}
