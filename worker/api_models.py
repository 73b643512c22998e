"""The API's wire models (bodies, responses, errors) and the error responses each route documents."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from worker import models


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found, conflict.")
    message: str = Field(description="What went wrong and what to change.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Session to keep (the caller's current one); null or absent signs out everywhere.",
    )
    reason: str | None = Field(default=None, max_length=500, description="Kept with the job, for audit.")

    @field_validator("keep_session_id", "reason")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and any(ord(ch) < 32 and ch not in "\t\n" for ch in value):
            raise ValueError("must not contain NUL or control characters")
        return value


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    status_url: str = Field(description="GET this for the job's progress.")


class Job(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    user_id: str
    keep_session_id: str | None
    revoked_count: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class SessionOut(BaseModel):
    id: str = Field(description='The session id, or "sha256:..." where the id is the cookie value.')
    created_at: datetime | None = None
    last_activity_at: datetime | None = None
    expires_at: datetime | None = None
    ip: str | None = None
    user_agent: str | None = None


class Health(BaseModel):
    status: Literal["ok", "ready"]
    checks: dict[str, str] = Field(default_factory=dict)


class NotReady(ErrorBody):
    checks: dict[str, str]


def _row_model(name: str, table: sa.Table, exclude: tuple[str, ...] = (), **extra: Any) -> type[BaseModel]:
    # Built from our table so the schema follows the stats and anomaly jobs' columns.
    fields: dict[str, Any] = {}
    for col in table.columns:
        if col.name in exclude:
            continue
        try:
            py: Any = col.type.python_type
        except NotImplementedError:
            py = Any
        fields[col.name] = (py | None, None)
    model: type[BaseModel] = create_model(name, **fields, **extra)
    return model


UserStats = _row_model("UserStats", models.user_stats)
Stats = _row_model("Stats", models.stats_snapshots, exclude=("id",))
Alert = _row_model("Alert", models.alerts, deliveries=(dict[str, int], Field(description="by status")))


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a route: each status with our error body."""
    text = {
        400: "Bad id, header or value",
        401: "Missing or invalid bearer token",
        403: "Token lacks the scope",
        404: "Not found",
        409: "Idempotency-Key reused with another body",
        413: "Request body too large",
        422: "Malformed body or parameter",
        501: "The session-table mapping lacks a column this needs",
        503: "Database unreachable or misconfigured",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}
