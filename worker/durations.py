"""Parsing of human durations ("90s", "30m", "1h30m", "30d") and schedules (duration or crontab)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")

DURATION_HELP = 'a number with a unit (ms, s, m, h, d, w), e.g. "90s", "30m", "12h", "30d", "1h30m"'


#: nothing we schedule or keep needs longer; larger values are typos
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: object) -> timedelta:
    """Turn "90s", "30m", "1h30m", a bare number of seconds or a timedelta into a timedelta."""
    try:
        result = _parse_duration(value)
    except (OverflowError, ValueError) as exc:
        if (isinstance(exc, ValueError) and "duration" in str(exc)) or "negative" in str(exc):
            raise
        raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}") from None
    if result > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION.days} days; use {DURATION_HELP}")
    return result


def _parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}")
    elif isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}")
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            result = timedelta(seconds=float(text))
        else:
            parts = _PART.findall(text)
            if not text or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}")
            result = timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    else:
        raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}")
    if result < timedelta(0):
        raise ValueError(f"{value!r} is negative; durations must be zero or more")
    return result


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way it would be written in configuration ("1h30m")."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{int(count)}{unit}")
    if seconds:
        out.append(f"{seconds:g}s")
    return "".join(out) or "0s"


def parse_schedule(value: object) -> str:
    """Validate a schedule: a duration ("5m") or a five-field crontab ("*/5 * * * *")."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f'{value!r} is not a schedule; use a duration like "5m" or a crontab')
    text = str(value).strip()
    fields = text.split()
    if len(fields) == 5:
        if not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"{value!r} is not a valid crontab (minute hour day month weekday)")
        return " ".join(fields)
    try:
        interval = parse_duration(text)
    except ValueError:
        raise ValueError(
            f'{value!r} is not a schedule; use a duration like "5m" or a five-field crontab '
            'like "*/5 * * * *"'
        ) from None
    if interval < timedelta(seconds=1):
        raise ValueError(f"{value!r} is too short; a schedule interval must be at least 1s")
    return text
