"""One settings model: SESSIONKEEPER_* environment variables (nested with __) over an optional TOML file.

Precedence, highest first: environment, the TOML file (``--config PATH`` or
``SESSIONKEEPER_CONFIG``), then the defaults below. Read through ``get_settings()``, never at import.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import tomllib
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from worker.durations import format_duration, parse_duration, parse_schedule
from worker.errors import ConfigurationError

ENV_PREFIX = "SESSIONKEEPER_"
CONFIG_ENV = "SESSIONKEEPER_CONFIG"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
Schedule = Annotated[str, BeforeValidator(parse_schedule)]
TimeKind = Literal["timestamptz", "timestamp", "epoch_seconds", "epoch_millis"]
TIME_COLUMNS = ("expires_at", "created_at", "last_activity_at", "revoked")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    #: SQLAlchemy URL; postgres:// and postgresql:// use psycopg 3; default an SQLite file here
    url: SecretStr = SecretStr("sqlite:///sessionkeeper.db")
    #: optional read replica for stats and scans
    replica_url: SecretStr | None = None
    connect_timeout: Duration = timedelta(seconds=5)
    pool_size: int = Field(default=5, ge=1, le=100)

    @field_validator("url", "replica_url")
    @classmethod
    def _known_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme = value.get_secret_value().split(":", 1)[0].lower()
        if scheme not in {"sqlite", "postgres", "postgresql", "postgresql+psycopg"}:
            raise ValueError(
                f"unsupported database scheme {scheme!r}; use postgresql://user@host/db or sqlite:///path.db"
            )
        return value


class BrokerSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    #: Redis redelivers unacked messages after this; every time limit and countdown stays below it
    visibility_timeout: Duration = timedelta(hours=1)


class UserIdJson(_Section):
    column: str
    path: list[str] = Field(min_length=1)


class SessionsSettings(_Section):
    """The application's session table. Unset keys come from ``profile``; "" unmaps a column."""

    profile: str | None = None
    table: str | None = None
    id: str | None = None
    user_id: str | None = None
    user_id_json: UserIdJson | None = None
    expires_at: str | None = None
    created_at: str | None = None
    last_activity_at: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    revoked: str | None = None
    revoked_when: Literal["not_null", "true", "false"] | None = None
    time_kind: TimeKind | None = None
    time_kinds: dict[str, TimeKind] = Field(default_factory=dict)

    @field_validator("time_kinds")
    @classmethod
    def _time_columns_only(cls, value: dict[str, TimeKind]) -> dict[str, TimeKind]:
        unknown = sorted(set(value) - set(TIME_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown column key(s) {', '.join(unknown)}; time_kinds takes " + ", ".join(TIME_COLUMNS)
            )
        return value


class PolicySettings(_Section):
    #: keep expired (and soft-revoked) rows this long before purging, for audit
    grace: Duration = timedelta(0)
    #: purge sessions whose last activity is older than this (needs last_activity_at)
    idle_timeout: Duration | None = None
    #: purge sessions created longer ago than this (needs created_at)
    absolute_timeout: Duration | None = None
    #: evict each user's least recently active sessions beyond this many
    max_sessions_per_user: int | None = Field(default=None, ge=1)


class PurgeSettings(_Section):
    schedule: Schedule = "5m"
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    #: rows per batch with --fast (fewer, larger transactions: per-batch overhead dominates at 5000)
    fast_batch_size: int = Field(default=20000, ge=1, le=1_000_000)
    max_run_seconds: Duration = timedelta(minutes=4)
    max_rows_per_run: int | None = Field(default=None, ge=1)
    #: share of the server's WAL budget (max_wal_size per checkpoint_timeout) a paced purge may use
    wal_budget_share: float = Field(default=0.25, gt=0, le=1)
    lock_timeout: Duration = timedelta(seconds=1)
    statement_timeout: Duration = timedelta(seconds=30)
    #: whole expired partitions: "drop" them, or only "detach" them
    partitions: Literal["drop", "detach"] = "drop"
    #: PostgreSQL batch order: "walk" the heap in block ranges (backlogs), follow each reason's
    #: "index" (a trickle), or "auto" (walk when the backlog is large or a reason has no index)
    strategy: Literal["auto", "walk", "index"] = "auto"


class StatsSettings(_Section):
    schedule: Schedule = "15m"
    #: count distinct IPs and user agents per user (needs a sort of the active rows: the costliest part)
    distinct_counts: bool = True
    #: PostgreSQL work_mem for the stats transaction only (SET LOCAL), so its sorts stay in memory
    work_mem: str | None = "64MB"

    @field_validator("work_mem")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9][0-9]{0,6}(kB|MB|GB)", value):
            raise ValueError(f"{value[:20]!r} is not a PostgreSQL memory size such as 64MB, 512kB or 1GB")
        return value


class AnomalySettings(_Section):
    schedule: Schedule = "1m"
    #: re-read this far behind the watermark, for transactions that commit late
    lateness: Duration = timedelta(minutes=2)
    #: the first scan backfills rollups from sessions created within this horizon
    backfill_horizon: Duration = timedelta(days=8)
    user_burst_min_count: int = Field(default=10, ge=1)
    user_burst_min_ratio: float = Field(default=3.0, ge=1)
    user_burst_always: int = Field(default=50, ge=1)
    #: a user burst also needs a negative-binomial tail p-value below this (1e-9: critical)
    user_burst_p_value: float = Field(default=1e-6, gt=0, lt=1)
    #: robust z a 5-minute site-wide count must reach to be a spike
    global_spike_z: float = Field(default=5.0, gt=0)
    #: a drop alert needs at least this many sessions expected in the 5 minutes
    global_drop_min_expected: float = Field(default=20.0, ge=1)
    #: false-alarm budget: a spike must beat the Nth strangest spike episode of the past week
    #: (0 turns the budget off)
    global_spike_budget: int = Field(default=3, ge=0, le=50)
    #: a spike at least this many times the expected count ignores the budget (always notifies);
    #: unset: the budget applies to every spike (quieter on very bursty traffic)
    global_spike_budget_exempt_ratio: float | None = Field(default=3.0, gt=1)
    ip_warn_users: int = Field(default=5, ge=2)
    ip_critical_users: int = Field(default=20, ge=2)
    ip_allowlist: list[str] = Field(default_factory=list)
    mass_anomaly_threshold: int = Field(default=20, ge=2)
    cooldown_user: Duration = timedelta(minutes=60)
    cooldown_ip: Duration = timedelta(minutes=30)
    cooldown_global: Duration = timedelta(minutes=15)
    cooldown_operational: Duration = timedelta(minutes=60)
    table_max_rows: int | None = Field(default=None, ge=1)
    table_max_bytes: int | None = Field(default=None, ge=1)
    #: alert when the table grows by more than this share per day
    table_max_growth_per_day: float | None = Field(default=None, gt=0)

    @field_validator("ip_allowlist")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR like 10.0.0.0/8 or 2001:db8::/32") from None
        return value


#: sink names taken by the built-in sinks
RESERVED_SINK_NAMES = frozenset({"log", "sentry"})
#: longest a single delivery attempt may take, in seconds (keeps a pass well inside a task)
MAX_SINK_TIMEOUT_SECONDS = 60


class WebhookSink(_Section):
    #: identifies the sink in delivery rows, logs and `sessionkeeper alerts test`; unique
    name: str = Field(default="webhook", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: SecretStr
    #: HMAC-SHA256 key for the X-Sessionkeeper-Signature header
    secret: SecretStr | None = None
    #: one attempt (connect, send, response) is cut off after this long
    timeout: Duration = timedelta(seconds=5)
    #: "json" for our JSON body, "slack" for a Slack-compatible incoming webhook
    format: Literal["json", "slack"] = "json"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        if not re.match(r"^https?://[^/\s]+", value.get_secret_value(), re.IGNORECASE):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("timeout")
    @classmethod
    def _bounded_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(seconds=MAX_SINK_TIMEOUT_SECONDS):
            raise ValueError(f"must be above 0s and at most {MAX_SINK_TIMEOUT_SECONDS}s")
        return value


class AlertSettings(_Section):
    webhooks: list[WebhookSink] = Field(default_factory=list)
    #: send alerts to Sentry when sentry.dsn is set
    sentry: bool = True
    #: one attempt to hand an alert to Sentry is cut off after this long
    sentry_timeout: Duration = timedelta(seconds=5)
    include_user_ids: bool = True
    include_ips: bool = True
    #: delivery attempts per sink before an alert notification is given up (stays recorded)
    max_attempts: int = Field(default=10, ge=1)
    #: wait after the first failed attempt; doubles after each further failure
    retry_base: Duration = timedelta(seconds=30)
    #: the wait between attempts never exceeds this
    retry_max: Duration = timedelta(hours=1)
    #: notifications claimed by one delivery pass
    deliver_batch_size: int = Field(default=200, ge=1, le=10_000)
    #: a delivery pass starts no new attempt after this long (what is left waits for the next)
    deliver_max_seconds: Duration = timedelta(seconds=30)
    #: standalone delivery schedule (scans also deliver at their end)
    deliver_schedule: Schedule = "1m"

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, value: list[WebhookSink]) -> list[WebhookSink]:
        seen: set[str] = set()
        for sink in value:
            if sink.name in RESERVED_SINK_NAMES:
                raise ValueError(f"webhook name {sink.name!r} is reserved for the built-in sink")
            if sink.name in seen:
                raise ValueError(f'two webhooks are named {sink.name!r}; give each a unique name = "..."')
            seen.add(sink.name)
        return value

    @field_validator("retry_base", "sentry_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be above 0s")
        if value > timedelta(hours=1):
            raise ValueError("must be at most 1h")
        return value

    @field_validator("retry_max")
    @classmethod
    def _not_below_base(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        base = info.data.get("retry_base")
        if base is not None and value < base:
            raise ValueError(f"must be at least retry_base ({format_duration(base)})")
        return value

    @field_validator("deliver_max_seconds")
    @classmethod
    def _pass_budget(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=5):
            raise ValueError("must be between 1s and 5m (a pass runs inside a task)")
        return value


class SentrySettings(_Section):
    dsn: SecretStr | None = None
    environment: str = "production"
    traces_sample_rate: float = Field(default=0.0, ge=0, le=1)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "auto": JSON when stderr is not a terminal, readable console lines otherwise
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ApiToken(_Section):
    name: str
    #: hex SHA-256 of the bearer token (the token itself is never stored)
    sha256: str
    scope: Literal["read", "revoke"] = "read"

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(
                "must be the 64-hex-digit SHA-256 of the token "
                "(printf %s TOKEN | sha256sum), not the token itself"
            )
        return value.lower()


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tokens: list[ApiToken] = Field(default_factory=list)
    #: serve without authentication (development only; announced loudly)
    insecure_dev: bool = False
    max_body_bytes: int = Field(default=16_384, ge=256)
    #: how session ids are listed: "auto" (a fingerprint when the profile's id is the cookie value),
    #: "raw", or "fingerprint" (sha256: prefix, never the id itself)
    session_ids: Literal["auto", "raw", "fingerprint"] = "auto"


class RevokeSettings(_Section):
    #: Redis channel that receives {"user_id", "session_ids", "job_id"} after a revocation commits
    event_channel: str = "sessionkeeper:revocations"
    #: re-publish jobs still queued after this long
    outbox_delay: Duration = timedelta(seconds=30)
    outbox_schedule: Schedule = "1m"
    #: deliveries of one job (a worker lost mid-job redelivers it) before it ends failed
    max_attempts: int = Field(default=5, ge=1)


class WorkerSettings(_Section):
    soft_time_limit: Duration = timedelta(minutes=9)
    time_limit: Duration = timedelta(minutes=10)
    retry_backoff_max: Duration = timedelta(minutes=10)
    max_retries: int = Field(default=5, ge=0)
    heartbeat_file: Path = Path("/tmp/sessionkeeper-worker.heartbeat")  # noqa: S108
    ready_file: Path = Path("/tmp/sessionkeeper-worker.ready")  # noqa: S108
    max_tasks_per_child: int = Field(default=1000, ge=1)
    max_memory_per_child_kb: int = Field(default=512_000, ge=10_000)

    @model_validator(mode="after")
    def _limits_ordered(self) -> WorkerSettings:
        if self.soft_time_limit >= self.time_limit:
            raise ValueError("soft_time_limit must be below time_limit")
        return self


class RetentionSettings(_Section):
    schedule: Schedule = "0 3 * * *"
    job_runs: Duration = timedelta(days=30)
    snapshots: Duration = timedelta(days=90)
    rollups: Duration = timedelta(days=35)
    resolved_alerts: Duration = timedelta(days=90)
    finished_revocations: Duration = timedelta(days=30)


_toml_data: ContextVar[dict[str, Any]] = ContextVar("sessionkeeper_toml", default={})  # noqa: B039


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds the already-parsed TOML file to pydantic-settings (so env can override it)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _toml_data.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get())


class Settings(BaseSettings):
    """Everything sessionkeeper reads from its environment and configuration file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    sessions: SessionsSettings = SessionsSettings()
    policy: PolicySettings = PolicySettings()
    purge: PurgeSettings = PurgeSettings()
    stats: StatsSettings = StatsSettings()
    anomaly: AnomalySettings = AnomalySettings()
    alerts: AlertSettings = AlertSettings()
    sentry: SentrySettings = SentrySettings()
    logging: LoggingSettings = LoggingSettings()
    api: ApiSettings = ApiSettings()
    revoke: RevokeSettings = RevokeSettings()
    worker: WorkerSettings = WorkerSettings()
    retention: RetentionSettings = RetentionSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @model_validator(mode="after")
    def _time_limits_below_visibility(self) -> Settings:
        if self.worker.time_limit >= self.broker.visibility_timeout:
            raise ValueError(
                "worker.time_limit must stay below broker.visibility_timeout, or Redis "
                "redelivers tasks that are still running"
            )
        if self.purge.max_run_seconds >= self.worker.soft_time_limit:
            raise ValueError("purge.max_run_seconds must stay below worker.soft_time_limit")
        return self


SECTIONS = tuple(Settings.model_fields)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigurationError(
            f"configuration file {path} does not exist",
            problems=[f"config file: {path} not found (set by --config or {CONFIG_ENV})"],
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            f"configuration file {path} is not valid TOML",
            problems=[f"config file {path}: {exc}"],
        ) from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigurationError(
            f"configuration file {path} has unknown sections",
            problems=[
                f"[{_printable(name)}]: unknown section; known sections: {', '.join(SECTIONS)}"
                for name in unknown
            ],
        )
    return data


def _printable(text: object) -> str:
    """User-supplied names in one line: control characters escaped, never a raw newline."""
    raw = str(text)
    return raw if raw.isprintable() else repr(raw)[1:-1]


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets a (nested) key."""
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if not isinstance(p, int))


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem: which key, what was wrong, what is accepted. Never echoes secrets."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = ".".join(_printable(p) for p in loc) or "(settings)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "literal_error":
            message = message.replace("Input should be", "must be one of")
        # a webhook list holds URLs that are secrets themselves (Slack embeds its token in the path)
        secret = any(p in {"url", "secret", "dsn", "sha256", "webhooks"} for p in map(str, loc))
        got = "" if secret or err["type"] == "missing" else f" (got {err['input']!r})"
        if len(got) > 80:
            got = got[:77] + "...)"
        lines.append(f"{key} [{_printable(env_name(loc))}]: {_printable(message)}{got}")
    return lines


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Build settings from the environment and the optional TOML file; raise ConfigurationError."""
    path = config_path or os.environ.get(CONFIG_ENV) or None
    data = _read_toml(Path(path)) if path else {}
    token = _toml_data.set(data)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError("invalid configuration", problems=describe_errors(exc)) from None
    except SettingsError:
        # pydantic-settings could not even decode an environment value (lists, tables).
        raise ConfigurationError("invalid configuration", problems=_undecodable_env()) from None
    finally:
        _toml_data.reset(token)


def _complex_env_names() -> dict[str, str]:
    """Environment variables whose value must be JSON (lists and tables), with what they hold."""
    names = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, sub in model.model_fields.items():
            text = str(sub.annotation)
            if text.startswith(("list", "dict")) or "UserIdJson" in text:
                kind = "a JSON list" if text.startswith("list") else "a JSON object"
                names[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = kind
    return names


def _undecodable_env() -> list[str]:
    problems = []
    for env, kind in _complex_env_names().items():
        raw = os.environ.get(env)
        if raw is None:
            continue
        try:
            json.loads(raw)
        except ValueError:
            key = env.removeprefix(ENV_PREFIX).lower().replace("__", ".")
            problems.append(f"{key} [{env}]: must be {kind}, e.g. {'[]' if 'list' in kind else '{}'}")
    return problems or [
        "environment: a SESSIONKEEPER_* value could not be decoded (lists and tables are JSON)"
    ]


@functools.cache
def get_settings(config_path: str | None = None) -> Settings:
    """The process-wide settings, read once."""
    return load_settings(config_path)
