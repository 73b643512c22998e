"""The mapping of the application's session table: profiles, validation, reflection, and the rules.

``load_mapping(settings)`` validates the configured mapping without touching the database;
``Mapping.reflect(conn)`` checks it against the live table and returns a ``SessionTable`` whose
expressions every job uses. The rules of what is expired, idle, revoked or active live here and
nowhere else, so purge, stats, revocation and the API always agree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from worker.errors import ConfigurationError, InvalidInput, MappingMismatch
from worker.profiles import PROFILES
from worker.settings import TIME_COLUMNS, PolicySettings, SessionsSettings, Settings

COLUMN_KEYS = ("id", "user_id", "expires_at", "created_at", "last_activity_at", "ip", "user_agent", "revoked")
_IDENT = re.compile(r"^[^\x00-\x1f\"\.]{1,63}$")
_JSON_KEY = re.compile(r"^[A-Za-z0-9_\-$@]{1,63}$")


@dataclass(frozen=True)
class Capability:
    name: str
    available: bool
    reason: str


@dataclass(frozen=True, kw_only=True)
class Mapping:
    """A validated mapping: names only, not yet checked against a database."""

    profile: str | None
    schema: str | None
    name: str
    columns: dict[str, str]  # key -> column name, only the mapped keys
    user_json: tuple[str, tuple[str, ...]] | None
    time_kinds: dict[str, str]
    revoked_when: str

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def has_user(self) -> bool:
        return "user_id" in self.columns or self.user_json is not None

    def has(self, key: str) -> bool:
        return (key == "user_id" and self.has_user) or key in self.columns

    def capabilities(self, policy: PolicySettings) -> list[Capability]:
        """What this mapping allows, each with the reason when it does not."""

        def cap(name: str, ok: bool, yes: str, no: str) -> Capability:
            return Capability(name, ok, yes if ok else no)

        has = self.has
        return [
            cap(
                "purge_expired",
                has("expires_at"),
                "rows past expires_at (+ grace) are purged",
                "no expires_at column mapped",
            ),
            cap(
                "purge_idle",
                has("last_activity_at") and policy.idle_timeout is not None,
                "rows idle past policy.idle_timeout are purged",
                "needs last_activity_at mapped and policy.idle_timeout set",
            ),
            cap(
                "purge_absolute",
                has("created_at") and policy.absolute_timeout is not None,
                "rows older than policy.absolute_timeout are purged",
                "needs created_at mapped and policy.absolute_timeout set",
            ),
            cap(
                "purge_revoked",
                has("revoked"),
                "soft-revoked rows are purged after grace",
                "no revoked column mapped",
            ),
            cap(
                "session_cap",
                self.has_user and policy.max_sessions_per_user is not None,
                f"sessions beyond {policy.max_sessions_per_user} per user are evicted",
                "needs a user column and policy.max_sessions_per_user",
            ),
            cap("per_user_stats", self.has_user, "per-user statistics", "no user column mapped"),
            cap("revocation", self.has_user, "sign-out-other-devices jobs", "no user column mapped"),
            cap(
                "creation_rate",
                has("created_at"),
                "session-creation anomaly detection",
                "no created_at column mapped",
            ),
            cap(
                "ip_spread",
                has("ip") and has("created_at") and self.has_user,
                "distinct users per IP detection",
                "needs ip, created_at and a user column",
            ),
            cap(
                "idle_figures",
                has("last_activity_at"),
                "idle-time statistics",
                "no last_activity_at column mapped",
            ),
        ]

    def reflect(self, conn: Connection) -> SessionTable:
        """Check the mapping against the live table; raise MappingMismatch naming what is wrong."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.name, schema=self.schema):
            raise MappingMismatch(
                f"table {self.qualified_name} does not exist",
                problems=[f"sessions.table: table {self.qualified_name!r} not found in the database"],
            )
        live = {c["name"]: c for c in inspector.get_columns(self.name, schema=self.schema)}
        wanted = dict(self.columns)
        if self.user_json:
            wanted["user_id_json"] = self.user_json[0]
        problems = [
            f"sessions.{key}: column {col!r} not found in {self.qualified_name} "
            f"(it has: {', '.join(sorted(live))})"
            for key, col in wanted.items()
            if col not in live
        ]
        if problems:
            raise MappingMismatch(f"mapping does not match table {self.qualified_name}", problems=problems)
        for key, col in wanted.items():
            problem = _type_problem(
                key, self.time_kinds.get(key), self.revoked_when, live[col]["type"], conn.dialect.name
            )
            if problem:
                problems.append(f"sessions.{key}: column {col!r} {problem}")
        if problems:
            raise MappingMismatch(f"mapping does not match table {self.qualified_name}", problems=problems)
        table = sa.Table(
            self.name,
            sa.MetaData(),
            *(sa.Column(col, live[col]["type"], key=col) for col in dict.fromkeys(wanted.values())),
            schema=self.schema,
        )
        return SessionTable(mapping=self, table=table, dialect=conn.dialect.name)


def _type_problem(key: str, kind: str | None, revoked_when: str, coltype: Any, dialect: str) -> str | None:
    """Why a live column type cannot hold what the mapping says it holds, or None."""
    type_name = (
        str(coltype.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
        if dialect == "postgresql"
        else str(coltype)
    )
    is_int = isinstance(coltype, sa.Integer)
    is_ts = isinstance(coltype, sa.DateTime | sa.Date)
    if key == "revoked" and revoked_when != "not_null":
        ok_types = (sa.Boolean,) if dialect == "postgresql" else (sa.Boolean, sa.Integer)
        if not isinstance(coltype, ok_types):
            return f"is {type_name}; revoked_when={revoked_when!r} needs a boolean column"
        return None
    if kind is None:
        if (
            key == "user_id_json"
            and dialect == "postgresql"
            and not isinstance(coltype, sa.JSON | sa.String | sa.Text)
        ):
            return f"is {type_name}; a JSON user id needs a json, jsonb or text column"
        return None
    if kind in {"epoch_seconds", "epoch_millis"}:
        return (
            None
            if is_int or isinstance(coltype, sa.Numeric)
            else (f"is {type_name}; time kind {kind} needs an integer column")
        )
    if dialect != "postgresql":
        return f"is {type_name}; time kind {kind} needs a timestamp, not an integer" if is_int else None
    if not is_ts:
        return f"is {type_name}; time kind {kind} needs a timestamp column (or set an epoch kind)"
    has_tz = bool(getattr(coltype, "timezone", False))
    if kind == "timestamptz" and not has_tz:
        return f'is {type_name} (naive); set sessions.time_kinds.{key} = "timestamp" so it is read as UTC'
    if kind == "timestamp" and has_tz:
        return f'is {type_name}; set sessions.time_kinds.{key} = "timestamptz"'
    return None


def _ident(value: str, where: str) -> str:
    if not _IDENT.match(value):
        raise ConfigurationError(
            f"invalid identifier for {where}",
            problems=[
                f"{where}: {value[:70]!r} is not a valid identifier "
                "(1-63 characters, no quotes, dots or control characters)"
            ],
        )
    return value


def load_mapping(settings: Settings | SessionsSettings) -> Mapping:
    """Merge the profile with explicit keys and validate every name (no database access)."""
    cfg = settings.sessions if isinstance(settings, Settings) else settings
    explicit = cfg.model_dump(exclude_unset=True, exclude={"profile", "time_kinds"})
    explicit = {k: v for k, v in explicit.items() if v is not None}
    profile_name = cfg.profile or (None if "table" in explicit else "sessionkeeper")
    merged: dict[str, Any] = {}
    if profile_name is not None:
        if profile_name not in PROFILES:
            raise ConfigurationError(
                "unknown profile",
                problems=[
                    f"sessions.profile: unknown profile {profile_name!r}; "
                    f"built-in profiles: {', '.join(PROFILES)}"
                ],
            )
        merged.update(PROFILES[profile_name].columns)
    merged.update(explicit)
    problems: list[str] = []
    for required in ("table", "id"):
        if not merged.get(required):
            problems.append(f"sessions.{required}: required when no profile is given")
    if merged.get("user_id") and merged.get("user_id_json"):
        problems.append("sessions.user_id / user_id_json: set one or the other, not both")
    if problems:
        raise ConfigurationError("incomplete session-table mapping", problems=problems)

    schema, _, name = str(merged["table"]).rpartition(".")
    _ident(name, "sessions.table")
    if schema:
        _ident(schema, "sessions.table (schema part)")
    columns = {}
    for key in COLUMN_KEYS:
        value = merged.get(key)
        if value:  # "" unmaps a profile's column
            columns[key] = _ident(str(value), f"sessions.{key}")
    user_json = None
    raw_json = merged.get("user_id_json")
    if raw_json and not merged.get("user_id"):
        data = raw_json if isinstance(raw_json, dict) else raw_json.model_dump()
        path = tuple(str(p) for p in data["path"])
        for part in path:
            if not _JSON_KEY.match(part):
                raise ConfigurationError(
                    "invalid JSON path",
                    problems=[f"sessions.user_id_json.path: {part[:40]!r} must be letters, digits, _ - $ @"],
                )
        user_json = (_ident(str(data["column"]), "sessions.user_id_json.column"), path)
        columns.pop("user_id", None)
    default_kind = merged.get("time_kind") or "timestamptz"
    kinds = {k: cfg.time_kinds.get(k, default_kind) for k in TIME_COLUMNS if k in columns}
    revoked_when = merged.get("revoked_when") or "not_null"
    if "revoked" in columns and revoked_when != "not_null":
        kinds.pop("revoked", None)
    return Mapping(
        profile=profile_name,
        schema=schema or None,
        name=name,
        columns=columns,
        user_json=user_json,
        time_kinds=kinds,
        revoked_when=revoked_when,
    )


@dataclass(frozen=True, kw_only=True)
class SessionTable:
    """A mapping checked against the live table: SQLAlchemy expressions for every rule."""

    mapping: Mapping
    table: sa.Table
    dialect: str

    def c(self, key: str) -> sa.ColumnElement[Any] | None:
        """The column mapped to ``key`` (e.g. "expires_at"), or None when not mapped."""
        name = self.mapping.columns.get(key)
        return self.table.c[name] if name else None

    def need(self, key: str) -> sa.ColumnElement[Any]:
        col = self.c(key)
        if col is None:
            raise ConfigurationError(
                f"sessions.{key} is not mapped", problems=[f"sessions.{key}: this feature needs it mapped"]
            )
        return col

    @property
    def id_col(self) -> sa.ColumnElement[Any]:
        return self.need("id")

    @property
    def user_expr(self) -> sa.ColumnElement[Any] | None:
        """The user id as an expression: a column, or text extracted from a JSON column."""
        if self.mapping.user_json is None:
            return self.c("user_id")
        col_name, path = self.mapping.user_json
        col = self.table.c[col_name]
        if self.dialect == "postgresql":
            if isinstance(col.type, postgresql.JSONB):
                return sa.func.jsonb_extract_path_text(col, *path)
            if isinstance(col.type, sa.JSON):
                return sa.func.json_extract_path_text(col, *path)
            return sa.func.jsonb_extract_path_text(sa.cast(col, postgresql.JSONB), *path)
        json_path = "$" + "".join(f'."{p}"' for p in path)
        return sa.case(
            (sa.func.json_valid(col) == 1, sa.cast(sa.func.json_extract(col, json_path), sa.Text)),
            else_=sa.null(),
        )

    def user_value(self, user_id: str) -> Any:
        """A user id from a URL or CLI argument, converted to the user column's type."""
        col = self.c("user_id")
        if col is not None and isinstance(col.type, sa.Integer):
            try:
                return _bigint(user_id)
            except ValueError:
                raise InvalidInput(
                    "bad user id",
                    problems=[
                        f"user id {user_id[:40]!r}: must be an integer for {self.mapping.qualified_name}"
                    ],
                ) from None
        return user_id

    def id_value(self, session_id: str) -> Any:
        """A session id from outside, converted to the id column's type."""
        if isinstance(self.id_col.type, sa.Integer):
            try:
                return _bigint(session_id)
            except ValueError:
                raise InvalidInput(
                    "bad session id",
                    problems=[f"session id: must be an integer for {self.mapping.qualified_name}"],
                ) from None
        if isinstance(self.id_col.type, sa.Uuid):
            import uuid

            try:
                return uuid.UUID(session_id)
            except ValueError:
                raise InvalidInput("bad session id", problems=["session id: must be a UUID"]) from None
        return session_id

    def time_value(self, key: str, moment: datetime) -> Any:
        """``moment`` (aware) as a parameter in the column's own kind: compare, never convert rows.

        Epoch values are rounded up so ``col < v`` and ``col >= v`` stay exact complements.
        """
        kind = self.mapping.time_kinds[key]
        utc = moment.astimezone(UTC)
        if kind == "epoch_seconds":
            return math.ceil(utc.timestamp())
        if kind == "epoch_millis":
            return math.ceil(utc.timestamp() * 1000)
        if kind == "timestamp" or self.dialect != "postgresql":
            return utc.replace(tzinfo=None)
        return utc

    def to_datetime(self, key: str, raw: Any) -> datetime | None:
        """A value read from a time column, as an aware UTC datetime."""
        if raw is None:
            return None
        kind = self.mapping.time_kinds[key]
        if kind == "epoch_seconds":
            return datetime.fromtimestamp(float(raw), UTC)
        if kind == "epoch_millis":
            return datetime.fromtimestamp(float(raw) / 1000, UTC)
        value: datetime = datetime.fromisoformat(raw) if isinstance(raw, str) else raw
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def _before(self, key: str, cutoff: datetime) -> sa.ColumnElement[bool]:
        return self.need(key) < sa.bindparam(None, self.time_value(key, cutoff), type_=self.need(key).type)

    def _not_before(self, key: str, cutoff: datetime) -> sa.ColumnElement[bool]:
        col = self.need(key)
        return sa.or_(col.is_(None), col >= sa.bindparam(None, self.time_value(key, cutoff), type_=col.type))

    # --- the rules ---------------------------------------------------------------------------

    def expired_clause(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        """Expired before ``cutoff``; a NULL expiry is never expired."""
        return self._before("expires_at", cutoff)

    def idle_clause(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        return self._before("last_activity_at", cutoff)

    def absolute_clause(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        return self._before("created_at", cutoff)

    def revoked_clause(self, cutoff: datetime | None = None) -> sa.ColumnElement[bool]:
        """Soft-revoked (and, for a revocation timestamp, revoked before ``cutoff`` when given)."""
        col = self.need("revoked")
        when = self.mapping.revoked_when
        if when == "true":
            return col == sa.true()
        if when == "false":
            return col == sa.false()
        if cutoff is None:
            return col.is_not(None)
        return self._before("revoked", cutoff)

    def purge_reasons(self, now: datetime, policy: PolicySettings) -> dict[str, sa.ColumnElement[bool]]:
        """Every reason a row may be purged, by name, in the order reasons are counted."""
        reasons: dict[str, sa.ColumnElement[bool]] = {}
        if self.c("expires_at") is not None:
            reasons["expired"] = self.expired_clause(now - policy.grace)
        if self.c("last_activity_at") is not None and policy.idle_timeout is not None:
            reasons["idle"] = self.idle_clause(now - policy.idle_timeout)
        if self.c("created_at") is not None and policy.absolute_timeout is not None:
            reasons["absolute"] = self.absolute_clause(now - policy.absolute_timeout)
        if self.c("revoked") is not None:
            reasons["revoked"] = self.revoked_clause(now - policy.grace)
        return reasons

    def active_clause(self, now: datetime, policy: PolicySettings) -> sa.ColumnElement[bool]:
        """Not expired (NULL expiry counts as live), not idle, not past absolute, not revoked."""
        parts: list[sa.ColumnElement[bool]] = []
        if self.c("expires_at") is not None:
            parts.append(self._not_before("expires_at", now))
        if self.c("last_activity_at") is not None and policy.idle_timeout is not None:
            parts.append(self._not_before("last_activity_at", now - policy.idle_timeout))
        if self.c("created_at") is not None and policy.absolute_timeout is not None:
            parts.append(self._not_before("created_at", now - policy.absolute_timeout))
        if self.c("revoked") is not None:
            parts.append(sa.or_(self.c("revoked").is_(None), sa.not_(self.revoked_clause())))  # type: ignore[union-attr]
        return sa.and_(sa.true(), *parts)

    # --- time values inside SQL ---------------------------------------------------------------

    def utc_expr(self, key: str, value: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[Any]:
        """``value`` (default: the column) of the column's kind, as our own tables store time.

        timestamptz on PostgreSQL, naive UTC text on SQLite (what ``models.UtcDateTime`` holds), so
        ``INSERT ... SELECT`` into our tables needs no Python round trip. Apply it after ``min``/``max``:
        every conversion is monotonic, and converting one value per group is cheaper than per row.
        """
        expr = self.need(key) if value is None else value
        kind = self.mapping.time_kinds[key]
        if self.dialect == "postgresql":
            if kind == "epoch_seconds":
                return sa.func.to_timestamp(sa.cast(expr, sa.Float))
            if kind == "epoch_millis":
                return sa.func.to_timestamp(sa.cast(expr, sa.Float) / 1000.0)
            if kind == "timestamp":
                return sa.func.timezone("UTC", expr)
            return expr
        if kind == "epoch_seconds":
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", expr, "unixepoch")
        if kind == "epoch_millis":
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", sa.cast(expr, sa.Float) / 1000.0, "unixepoch")
        return expr

    def age_seconds(self, key: str, now: datetime) -> sa.ColumnElement[float]:
        """Seconds from the column's time to ``now``, per row, as a float (epoch kinds stay integer math)."""
        col = self.need(key)
        kind = self.mapping.time_kinds[key]
        now_epoch = now.astimezone(UTC).timestamp()
        if kind == "epoch_seconds":
            return sa.literal(now_epoch, sa.Float) - sa.cast(col, sa.Float)
        if kind == "epoch_millis":
            return sa.literal(now_epoch, sa.Float) - sa.cast(col, sa.Float) / 1000.0
        if self.dialect == "postgresql":
            moment = sa.literal(now.astimezone(UTC), sa.DateTime(timezone=True))
            # date_part gives float8; extract() gives numeric since PostgreSQL 14 (several times slower)
            return sa.func.date_part("epoch", moment - self.utc_expr(key), type_=sa.Float)
        naive = now.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        return (sa.func.julianday(sa.literal(naive, sa.Text)) - sa.func.julianday(col)) * 86400.0


def _bigint(text: str) -> int:
    # Past 64 bits the database raises a data error instead of finding nothing: refuse it here.
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


_opened: dict[tuple[str, str], SessionTable] = {}


def _cache_key(engine: Engine, settings: Settings) -> tuple[str, str]:
    return (engine.url.render_as_string(hide_password=False), settings.sessions.model_dump_json())


def open_table(conn: Connection, settings: Settings) -> SessionTable:
    """The mapping reflected against this engine's database, once per process and mapping."""
    key = _cache_key(conn.engine, settings)
    table = _opened.get(key)
    if table is None:
        table = load_mapping(settings).reflect(conn)
        _opened[key] = table
    return table


def table_for(engine: Engine, settings: Settings) -> SessionTable:
    """``open_table`` without taking a connection once the mapping is reflected (hot paths: the API)."""
    table = _opened.get(_cache_key(engine, settings))
    if table is None:
        with engine.connect() as conn:
            table = open_table(conn, settings)
    return table


def utcnow() -> datetime:
    """Now, timezone-aware UTC (every datetime in sessionkeeper is)."""
    return datetime.now(UTC)


__all__ = [
    "Capability",
    "Mapping",
    "SessionTable",
    "load_mapping",
    "open_table",
    "table_for",
    "timedelta",
    "utcnow",
]
