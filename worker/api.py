"""The HTTP API (FastAPI): revocation jobs, a user's sessions, stats, alerts and health probes.

``create_app(settings)`` builds the app; ``sessionkeeper api`` serves it with uvicorn. Every
error is ``{"error": {"code", "message"}}`` with its status, produced in the handlers below.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import importlib
import importlib.util
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks import revoke
from tasks import stats as stats_job
from worker import db
from worker.alert import store as alert_store
from worker.api_middleware import Limits, error_response
from worker.api_models import (
    Alert,
    Health,
    Job,
    JobAccepted,
    NotReady,
    RevokeRequest,
    SessionOut,
    Stats,
    UserStats,
    error_responses,
)
from worker.errors import (
    CapabilityUnavailable,
    ConfigurationError,
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    SessionkeeperError,
)
from worker.observability import get_logger
from worker.profiles import PROFILES
from worker.sessiontable import utcnow
from worker.settings import ApiSettings, Settings

log = get_logger("sessionkeeper.api")
Scope = Literal["read", "revoke"]
_TEXT = r"^[^\x00-\x1f\x7f]+$"  # ids: no control characters (PostgreSQL refuses NUL in text)
UserId = Annotated[str, Path(min_length=1, max_length=255, pattern=_TEXT, description="The user's id.")]

_STATUS_FOR: tuple[tuple[type[SessionkeeperError], int], ...] = (
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (CapabilityUnavailable, 501),
    (DatabaseUnavailable, 503),
    (ConfigurationError, 503),
)


class ApiError(Exception):
    """An HTTP-level refusal (auth, size) raised inside the app and rendered by one handler."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# --- authentication -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    name: str
    digest: bytes
    scope: Scope


def _tokens(cfg: ApiSettings) -> list[_Token]:
    tokens = [_Token(t.name, bytes.fromhex(t.sha256), t.scope) for t in cfg.tokens]
    if not tokens and not cfg.insecure_dev:
        raise ConfigurationError(
            "the API needs at least one token",
            problems=[
                'api.tokens: add [{ name = "ops", sha256 = "<printf %s TOKEN | sha256sum>", '
                'scope = "revoke" }] (or SESSIONKEEPER_API__TOKENS as JSON); '
                "api.insecure_dev = true serves without auth, for development only"
            ],
        )
    return tokens


# Module level: FastAPI resolves the (string) annotations below against module globals.
_bearer = HTTPBearer(auto_error=False, description="A token from api.tokens (stored as SHA-256).")


def _authorizer(tokens: list[_Token], insecure: bool) -> Callable[[Scope], Any]:
    def need(scope: Scope) -> Any:
        # async: hashing needs no thread, and a sync dependency would cost a second thread hop.
        async def check(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
            if insecure:
                return "insecure-dev"
            if cred is None:
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", _CHALLENGE)
            digest = hashlib.sha256(cred.credentials.encode("utf-8", "surrogateescape")).digest()
            found = None
            for token in tokens:  # every comparison runs, so timing tells nothing about which
                if hmac.compare_digest(token.digest, digest):
                    found = token
            if found is None:
                raise ApiError(401, "unauthorized", "unknown bearer token", _CHALLENGE)
            if scope == "revoke" and found.scope != "revoke":
                raise ApiError(403, "forbidden", f"token {found.name!r} has scope read; this needs revoke")
            return found.name

        return Depends(check)

    return need


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _metrics_module() -> Any:
    # worker/metrics.py is optional: /metrics and request metrics exist only where it does.
    if importlib.util.find_spec("worker.metrics") is None:
        return None
    return importlib.import_module("worker.metrics")


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The API for these settings; ConfigurationError when no token is set outside insecure_dev."""
    cfg = settings.api
    need = _authorizer(_tokens(cfg), cfg.insecure_dev)
    reader, revoker = [need("read")], [need("revoke")]
    if cfg.insecure_dev:
        log.warning(
            "api_insecure_dev_mode",
            message="INSECURE: serving WITHOUT authentication (api.insecure_dev); development only",
        )
    engine = db.get_engine(settings)
    metrics = _metrics_module()
    marks = revoke.PublishedMarks(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from worker.sentry import init_sentry

        init_sentry(settings, process="api")  # at process start, never at import
        # Everything imported so far lives as long as the process: moved out of the collector's
        # reach, a full collection no longer walks it (tens of ms of pause, a p99 of its own).
        gc.collect()
        gc.freeze()
        yield
        marks.close()  # record the last published marks before the process goes

    app = FastAPI(
        title="sessionkeeper",
        version="1",
        summary="Sign users out of other devices; read session statistics and alerts.",
        responses=error_responses(422),
        lifespan=lifespan,
    )
    app.add_middleware(Limits, max_body=cfg.max_body_bytes, observe=getattr(metrics, "observe_request", None))
    _handlers(app)

    def fingerprints() -> bool:
        if cfg.session_ids != "auto":
            return cfg.session_ids == "fingerprint"
        profile = revoke.session_table(engine, settings).mapping.profile
        return profile is not None and PROFILES[profile].id_is_token

    @app.post(
        "/v1/users/{user_id}/sessions/revoke",
        dependencies=revoker,
        status_code=202,
        response_model=JobAccepted,
        responses=error_responses(400, 401, 403, 409, 413, 501, 503),
        summary="Sign the user out of every session, or all but keep_session_id",
    )
    def post_revoke(
        user_id: UserId,
        body: RevokeRequest | None = None,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                max_length=255,
                pattern=r"^[\x21-\x7e]+$",
                description="The same key and body return the same job; another body is a 409.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        req = body or RevokeRequest()
        submitted = revoke.submit_job(
            engine,
            settings,
            user_id=user_id,
            keep_session_id=req.keep_session_id,
            reason=req.reason,
            idempotency_key=idempotency_key,
            source="api",
        )
        job_id = submitted.job["job_id"]
        if submitted.created and revoke.publish_job(settings, job_id, backoff=True):
            marks.add(job_id)
        return {"job_id": job_id, "status": submitted.job["status"], "status_url": f"/v1/jobs/{job_id}"}

    @app.get(
        "/v1/jobs/{job_id}",
        dependencies=reader,
        response_model=Job,
        responses=error_responses(401, 403, 404, 503),
    )
    def get_job(job_id: uuid.UUID) -> dict[str, Any]:
        return revoke.get_job(engine, str(job_id))

    @app.get(
        "/v1/users/{user_id}/sessions",
        dependencies=reader,
        response_model=list[SessionOut],
        responses=error_responses(400, 401, 403, 501, 503),
        summary="The user's active sessions (never a token)",
    )
    def get_sessions(
        user_id: UserId,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return _active_sessions(engine, settings, user_id, limit=limit, fingerprint=fingerprints())

    @app.get(
        "/v1/users/{user_id}/stats",
        dependencies=reader,
        response_model=UserStats,
        responses=error_responses(400, 401, 403, 404, 503),
        summary="The user's figures from the last stats run",
    )
    def get_user_stats(user_id: UserId) -> dict[str, Any]:
        row = stats_job.user_stats(engine, user_id)
        if row is None:
            raise NotFound(f"no statistics for user {user_id[:64]!r} (none yet, or no active session)")
        return row

    @app.get(
        "/v1/stats", dependencies=reader, response_model=Stats, responses=error_responses(401, 403, 404, 503)
    )
    def get_stats() -> dict[str, Any]:
        row = stats_job.latest_snapshot(engine)
        if row is None:
            raise NotFound("no statistics yet: the stats job has not run (sessionkeeper stats)")
        row.pop("id", None)
        return row

    @app.get(
        "/v1/alerts",
        dependencies=reader,
        response_model=list[Alert],  # type: ignore[valid-type]
        responses=error_responses(401, 403, 503),
        summary="Alerts from the anomaly scans, most recently seen first, with delivery counts",
    )
    def get_alerts(
        state: Annotated[Literal["open", "all"], Query()] = "open",
        since: Annotated[datetime | None, Query(description="Only alerts seen since (ISO 8601).")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a bare time is UTC, like every time we store
        return alert_store.list_alerts(engine, open_only=state == "open", since=since, limit=limit)

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": NotReady, "description": "Database or broker unreachable"}},
        summary="The database and the broker are reachable",
    )
    def readyz() -> Any:
        checks = {
            "database": _probe(lambda: _ping_db(engine)),
            "broker": _probe(lambda: _ping_broker(settings)),
        }
        down = [name for name, result in checks.items() if result != "ok"]
        if down:
            return error_response(503, "not_ready", f"unreachable: {', '.join(down)}", checks=checks)
        return {"status": "ready", "checks": checks}

    if metrics is not None:

        @app.get(
            "/metrics", summary="Prometheus metrics", response_class=Response, responses=error_responses(503)
        )
        def get_metrics() -> Response:
            body, content_type = metrics.render(engine)
            return Response(body, media_type=content_type)

    return app


def app_from_environment() -> FastAPI:
    """The app for this process's settings: uvicorn's factory when serving several processes."""
    from worker.observability import configure_logging
    from worker.settings import get_settings

    settings = get_settings()
    configure_logging(settings.logging)
    return create_app(settings)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(SessionkeeperError)
    async def _ours(_: Request, exc: SessionkeeperError) -> JSONResponse:
        status = next((s for kind, s in _STATUS_FOR if isinstance(exc, kind)), 500)
        if status >= 500:
            log.warning("api_unavailable", code=exc.code, error=exc.message)
        message = "; ".join([exc.message, *exc.problems])
        return error_response(status, exc.code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(sa.exc.DataError)
    async def _data(_: Request, exc: sa.exc.DataError) -> JSONResponse:
        # The database refused a value (out of range, wrong text): the caller's input, not a fault.
        return error_response(
            400, "invalid_input", "a value was refused by the database; check ids and lengths"
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def _db(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("api_database_error", error=type(exc.orig).__name__)
        return error_response(503, "database_unavailable", "the database did not answer; try again")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("api_internal_error")
        return error_response(500, "internal_error", "internal error (logged); please report it")


# --- reads --------------------------------------------------------------------------------------


def _active_sessions(
    engine: sa.Engine, settings: Settings, user_id: str, *, limit: int, fingerprint: bool
) -> list[dict[str, Any]]:
    """The user's active sessions by the mapping's own rule, newest first, never a token column."""
    st = revoke.session_table(engine, settings)
    user = st.user_value(user_id)
    keys = [
        k for k in ("created_at", "last_activity_at", "expires_at", "ip", "user_agent") if st.c(k) is not None
    ]
    cols = [st.id_col.label("id"), *(st.need(k).label(k) for k in keys)]
    newest = st.c("last_activity_at") if st.c("last_activity_at") is not None else st.c("created_at")
    query = (
        sa.select(*cols)
        .where(revoke.user_expr(st) == user, st.active_clause(utcnow(), settings.policy))
        .order_by(*([newest.desc()] if newest is not None else []), st.id_col)
        .limit(limit)
    )
    with db.translate_errors(engine), engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        item: dict[str, Any] = {"id": _show_id(row.id, fingerprint)}
        for key in keys:
            raw = row._mapping[key]
            if key in ("created_at", "last_activity_at", "expires_at"):
                item[key] = st.to_datetime(key, raw)
            else:
                item[key] = None if raw is None else str(raw)
        out.append(item)
    return out


def _show_id(raw: Any, fingerprint: bool) -> str:
    text = str(raw)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32] if fingerprint else text


def _probe(check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # any failure means "not ready"; the kind is enough for the probe
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def _ping_db(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _ping_broker(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(
        settings.broker.url.get_secret_value(), socket_timeout=1, socket_connect_timeout=1
    )
    try:
        client.ping()
    finally:
        client.close()


__all__ = ["ApiError", "create_app"]
