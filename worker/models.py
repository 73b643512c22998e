"""Our own tables (schema ``sessionkeeper``), the Alembic target; the app's table is never here."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from worker.db import SCHEMA

metadata = sa.MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; naive UTC text on SQLite. Always aware UTC in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("job", sa.String(32), nullable=False),
    #: beat | cli | api | demo | test
    sa.Column("trigger", sa.String(16), nullable=False, server_default="cli"),
    sa.Column("task_id", sa.String(64)),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime()),
    #: running | succeeded | failed | skipped
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("figures", JSONType, nullable=False, server_default=sa.text("'{}'")),
    sa.Column("error", sa.Text()),
    sa.Index(None, "job", "started_at"),
)

user_stats = sa.Table(
    "user_stats",
    metadata,
    sa.Column("user_id", sa.Text(), primary_key=True),
    sa.Column("active_sessions", sa.Integer(), nullable=False),
    #: active sessions created in the last 24 h (NULL: no created_at mapped)
    sa.Column("created_24h", sa.Integer()),
    sa.Column("distinct_ips", sa.Integer()),
    sa.Column("distinct_user_agents", sa.Integer()),
    sa.Column("oldest_created_at", UtcDateTime()),
    sa.Column("newest_created_at", UtcDateTime()),
    sa.Column("last_activity_at", UtcDateTime()),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Index(None, "active_sessions"),
)

stats_snapshots = sa.Table(
    "stats_snapshots",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("taken_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("total_rows", sa.BigInteger(), nullable=False),
    sa.Column("active", sa.BigInteger(), nullable=False),
    #: rows the purge would delete now (any purge reason); NULL when no purge rule applies
    sa.Column("expired_pending", sa.BigInteger()),
    sa.Column("null_expiry", sa.BigInteger()),
    sa.Column("users_active", sa.BigInteger()),
    sa.Column("per_user_p50", sa.Float()),
    sa.Column("per_user_p95", sa.Float()),
    sa.Column("per_user_p99", sa.Float()),
    sa.Column("per_user_max", sa.BigInteger()),
    sa.Column("created_since_previous", sa.BigInteger()),
    sa.Column("purge_lag_seconds", sa.Float()),
    sa.Column("idle_mean_seconds", sa.Float()),
    sa.Column("idle_p95_seconds", sa.Float()),
    sa.Column("table_bytes", sa.BigInteger()),
    sa.Column("index_bytes", sa.BigInteger()),
    #: figures not available for this mapping, with the reason: {"users_active": "no user column"}
    sa.Column("unavailable", JSONType, nullable=False, server_default=sa.text("'{}'")),
)

creation_rollups = sa.Table(
    "creation_rollups",
    metadata,
    #: global | user | ip
    sa.Column("scope", sa.String(8), primary_key=True),
    #: "" for global, else the user id or IP
    sa.Column("entity", sa.Text(), primary_key=True),
    sa.Column("minute", UtcDateTime(), primary_key=True),
    sa.Column("count", sa.Integer(), nullable=False),
    #: distinct users in this minute (ip scope only)
    sa.Column("users", JSONType),
    #: retention deletes by minute across scopes
    sa.Index(None, "minute"),
    #: every scan reads one scope over its recent windows (entity totals of the last 10/60 min)
    sa.Index(None, "scope", "minute"),
)

scan_state = sa.Table(
    "scan_state",
    metadata,
    #: the session table this watermark belongs to
    sa.Column("table_key", sa.Text(), primary_key=True),
    sa.Column("watermark", UtcDateTime()),
    sa.Column("backfilled_at", UtcDateTime()),
    #: the oldest minute the rollups cover (the backfill start): earlier minutes are unknown, later
    #: minutes without a rollup row had no sessions
    sa.Column("history_start", UtcDateTime()),
    #: detector memory between scans: the spike budget's episodes, the cached population prior
    sa.Column("detector_state", JSONType, nullable=False, server_default=sa.text("'{}'")),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("fingerprint", sa.String(128), nullable=False, unique=True),
    sa.Column("rule", sa.String(32), nullable=False),
    sa.Column("entity", sa.Text(), nullable=False),
    #: warning | critical
    sa.Column("severity", sa.String(16), nullable=False),
    #: open | resolved
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("first_seen", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("suppressed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_value", sa.Float()),
    sa.Column("last_notified_at", UtcDateTime()),
    sa.Column("notified_severity", sa.String(16)),
    sa.Column("notified_value", sa.Float()),
    sa.Column("clear_since", UtcDateTime()),
    sa.Column("resolved_at", UtcDateTime()),
    #: the explanation: window, observed, expected, baseline, threshold, score, ...
    sa.Column("details", JSONType, nullable=False, server_default=sa.text("'{}'")),
    sa.Index(None, "state", "rule"),
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("alert_id", sa.BigInteger(), sa.ForeignKey("alerts.id", ondelete="CASCADE")),
    sa.Column("sink", sa.String(64), nullable=False),
    #: new | escalated | repeat | resolved | mass | test
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("payload", JSONType, nullable=False),
    #: pending | sent | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("last_error", sa.Text()),
    #: HTTP status of the last attempt (None for the log sink or a network error)
    sa.Column("last_status_code", sa.Integer()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime()),
    sa.Index(None, "status", "next_attempt_at"),
)

revocation_jobs = sa.Table(
    "revocation_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.Text(), nullable=False),
    sa.Column("keep_session_id", sa.Text()),
    sa.Column("reason", sa.Text()),
    sa.Column("idempotency_key", sa.String(255), unique=True),
    #: SHA-256 of the request body, to tell a replay from a conflicting reuse of the key
    sa.Column("request_hash", sa.String(64)),
    #: queued | running | succeeded | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("revoked_count", sa.Integer()),
    sa.Column("error", sa.Text()),
    #: api | cli
    sa.Column("source", sa.String(16), nullable=False, server_default="api"),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("published_at", UtcDateTime()),
    sa.Column("started_at", UtcDateTime()),
    sa.Column("finished_at", UtcDateTime()),
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "user_id"),
)
