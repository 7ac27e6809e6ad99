"""Reading JSON Lines files with errors that name the file, the line and the field.

Personas, episodes and SAGE results are all JSONL; they share this reader and error type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class RecordFileError(ValueError):
    """A record file that cannot be read; the message names the file, line and field."""

    def __init__(self, path: Path, line: int | None, field: str | None, problem: str) -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f", field {field!r}" if field else ""
        super().__init__(f"{where}{what}: {problem}")
        self.path = path
        self.line = line
        self.field = field


def field_of(error: ValidationError) -> tuple[str | None, str]:
    """The dotted location and message of a validation error's first problem."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    return location or None, first["msg"]


def iter_json_objects(
    path: Path, error: type[RecordFileError], *, skip_torn_last_line: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every non-blank line of ``path``.

    ``skip_torn_last_line`` ignores a final line with no newline, which only an interrupted
    append leaves behind. Anything else that is not a JSON object raises ``error``.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip() or (skip_torn_last_line and not raw.endswith(b"\n")):
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise error(path, number, None, f"invalid JSON: {detail}") from None
            if not isinstance(record, dict):
                kind = type(record).__name__
                raise error(path, number, None, f"expected a JSON object, got {kind}")
            yield number, record
