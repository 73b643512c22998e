"""Render the configuration reference (every key, its default, its environment name) as Markdown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from worker.durations import format_duration
from worker.settings import ENV_PREFIX, Settings


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        value = field.default_factory() if field.default_factory else "(required)"
    else:
        value = field.default
    if isinstance(value, timedelta):
        return f'"{format_duration(value)}"'
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def rows() -> list[tuple[str, str, str]]:
    """(key, default, environment variable) for every setting."""
    out = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, sub in model.model_fields.items():
            out.append((f"{section}.{name}", _default(sub), f"{ENV_PREFIX}{section.upper()}__{name.upper()}"))
    return out


def markdown() -> str:
    lines = ["| key | default | environment variable |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | `{e}` |" for k, d, e in rows()]
    return "\n".join(lines)


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def write_into(path: str) -> None:
    """Replace the block between the settings markers of a Markdown file."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{BEGIN}\n{markdown()}\n{END}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_into(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    else:
        print(markdown())
