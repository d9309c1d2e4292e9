"""Reading JSON-lines files that users give the service (datasets, ``problems.jsonl``): one JSON object per
line, blank lines skipped, every error naming the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backend.errors import InvalidInput


def read_objects(path: Path, *, field: str, name: str | None = None,
                 what: str = "an object") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of ``path``, read as it is iterated.

    Raises ``InvalidInput(field)`` naming the file (``name``, default the path) and the line when a line is not
    UTF-8 text, not JSON or not a JSON object (``what``: how the message names the object expected), and when
    the file cannot be read."""
    label = str(path) if name is None else name
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InvalidInput(field, f"{label} line {lineno} is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                       f"at column {e.start + 1}); save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidInput(field, f"{label} line {lineno} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InvalidInput(field, f"{label} line {lineno} is a {type(row).__name__}, expected {what}")
                yield lineno, row
    except OSError as e:
        raise InvalidInput(field, f"{label} cannot be read ({e.strerror or e})") from None
