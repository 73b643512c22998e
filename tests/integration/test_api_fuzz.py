"""Property-based fuzz of the API from its own OpenAPI schema: no request may produce a 5xx."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.revoke_helpers import seed_sessions
from worker import db
from worker.api import create_app
from worker.settings import Settings

pytestmark = pytest.mark.integration
TOKEN = "fuzz-token"
TOKENS = [{"name": "fuzz", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scope": "revoke"}]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class _Proxy:
    """The schema is loaded at import; each test points this at an app on its own database."""

    def __init__(self) -> None:
        # Only /openapi.json is read from this one, and the schema needs no database.
        self.app: Any = create_app(Settings(database={"url": "sqlite://"}, api={"tokens": TOKENS}))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


proxy = _Proxy()
schema = schemathesis.openapi.from_asgi("/openapi.json", proxy)


@pytest.fixture
def live_app(make_settings, pg_url, redis_url) -> Iterator[None]:  # type: ignore[no-untyped-def]
    cfg = make_settings(pg_url, broker={"url": redis_url}, api={"tokens": TOKENS})
    seed_sessions(db.get_engine(cfg), {"alice": 2, "0": 1})
    previous, proxy.app = proxy.app, create_app(cfg)
    yield
    proxy.app = previous


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@schema.parametrize()
@FUZZ
def test_no_server_errors(case: Any, live_app: None) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)


@schema.parametrize()
@settings(FUZZ, max_examples=8)
def test_no_server_errors_without_a_token(case: Any, live_app: None) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
