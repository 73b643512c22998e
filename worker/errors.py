"""The sessionkeeper exception tree.

    SessionkeeperError                 root: every error we raise on purpose
    ├── ConfigurationError             settings or a mapping cannot be used (exit 2)
    │   ├── MappingMismatch            the mapping names a table or column the database lacks (exit 2)
    │   └── InvalidInput               a user id, session id or request value is unusable (exit 2, HTTP 400)
    ├── CapabilityUnavailable          the mapping lacks a column a feature needs (exit 2)
    ├── DatabaseUnavailable            the database cannot be reached (exit 1, tasks retry)
    ├── BrokerUnavailable              the broker cannot be reached (exit 1)
    ├── NotFound                       a job, user or alert that does not exist (exit 1, HTTP 404)
    ├── Conflict                       an idempotency key reused with another body (HTTP 409)
    └── JobFailed                      a job ran and failed for a reason it can name (exit 1)

The CLI and the API each turn these into an exit code or a JSON error in one handler.
"""

from __future__ import annotations


class SessionkeeperError(Exception):
    """Root of every error sessionkeeper raises on purpose."""

    #: process exit code the CLI uses for this error
    exit_code: int = 1
    #: stable machine-readable code used in JSON errors
    code: str = "error"

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[str] = problems or []


class ConfigurationError(SessionkeeperError):
    """Settings or the session-table mapping are invalid."""

    exit_code = 2
    code = "configuration_error"


class MappingMismatch(ConfigurationError):
    """The mapping names a table or column that the database does not have."""

    code = "mapping_mismatch"


class InvalidInput(ConfigurationError):
    """A value from outside (a user id, a session id, a header) cannot be used as given."""

    code = "invalid_input"


class CapabilityUnavailable(SessionkeeperError):
    """A feature needs a column the mapping does not provide."""

    exit_code = 2
    code = "capability_unavailable"


class DatabaseUnavailable(SessionkeeperError):
    """The database could not be reached or refused the connection."""

    code = "database_unavailable"


class BrokerUnavailable(SessionkeeperError):
    """The Celery broker (Redis) could not be reached."""

    code = "broker_unavailable"


class NotFound(SessionkeeperError):
    """The requested job, user or record does not exist."""

    code = "not_found"


class Conflict(SessionkeeperError):
    """A request conflicts with an earlier one (an idempotency key reused with another body)."""

    code = "conflict"


class JobFailed(SessionkeeperError):
    """A job ran and failed for a reason it can name."""

    code = "job_failed"
