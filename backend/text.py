"""Text from models, programs and users made storable in every supported database, and shown the same
everywhere.

A model can emit any byte (a byte-level tokenizer does), a program under test can print anything, and a user
can upload anything: NUL bytes (PostgreSQL refuses them in text columns), terminal escape sequences, lone
surrogates (no database can encode them) and megabytes of text. ``storable`` is the one rule that turns such
text into text every database stores and every view shows as is:

1. bytes are decoded as UTF-8, each invalid sequence replaced by U+FFFD; in a ``str``, each lone surrogate
   (half of a UTF-16 pair, or an undecodable byte kept by ``surrogateescape``) is replaced by U+FFFD;
2. control characters other than tab, newline and carriage return are escaped visibly, not dropped: NUL,
   the other C0 controls and DEL as ``\\x00`` .. ``\\x1f``, ``\\x7f``, the C1 controls as ``\\u0080`` ..
   ``\\u009f``;
3. the result is capped at ``limit`` characters, its end replaced by a marker saying how many were cut.

The rule is idempotent (``storable(storable(t)) == storable(t)``), so text that went through it once (or was
escaped the same way before, e.g. by the sandbox) is stored unchanged. The model columns apply it to every
write (``backend.models.StorableText``); ``backend.services.progress.record_attempts`` also keeps the raw
response of an attempt whose text had to change, in a file under the job's folder.
"""

from __future__ import annotations

import re
from typing import Any

# Per-field caps (characters). Responses and code: a long reasoning response (8192 tokens) is ~40k characters.
RESPONSE_CHARS = 200_000
FEEDBACK_CHARS = 50_000
ERROR_CHARS = 20_000
STATEMENT_CHARS = 1_000_000

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL_CODES = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x80 else f"\\u{c:04x}") for c in _CONTROL_CODES}


def cut_marker(cut: int) -> str:
    """What replaces the end of a text longer than its cap."""
    return f"\n[... {cut} more characters cut]"


def storable(text: str | bytes, *, limit: int | None = None) -> str:
    """``text`` made storable and displayable (module docstring); ``limit``: at most this many characters."""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    text = _SURROGATES.sub("\ufffd", text)
    text = text.translate(_ESCAPES)
    if limit is not None and len(text) > limit:
        keep = max(0, limit - len(cut_marker(len(text))))  # the marker of the actual cut is no longer
        text = (text[:keep] + cut_marker(len(text) - keep))[:limit]
    return text


def valid_text(value: Any) -> Any:
    """``value`` (a JSON value: str, list, dict, number...) with each lone surrogate in its strings replaced by
    U+FFFD and nothing else changed: what a parsed user document (a problem) needs before a model or the
    sandbox reads it (neither can encode a lone surrogate); its control characters may be meaningful (test
    input) and are kept."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value


def first_surrogate(value: Any) -> str | None:
    """The first lone surrogate in the strings of a JSON value, as ``\\udXXX`` text; None when there is none."""
    if isinstance(value, str):
        m = _SURROGATES.search(value)
        return f"\\u{ord(m.group()):04x}" if m else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = (isinstance(k, str) and first_surrogate(k)) or first_surrogate(v)
        if found:
            return found
    return None



def storable_json(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with every string in it made ``storable``, values capped at
    ``RESPONSE_CHARS`` (an engine's result holds e.g. the solution code, a teacher view the model's tokens)."""
    if isinstance(value, str):
        return storable(value, limit=RESPONSE_CHARS)
    if isinstance(value, dict):
        return {storable(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value

def one_line(text: str, *, limit: int = 500) -> str:
    """The first non-empty line of ``text``, storable and at most ``limit`` characters (for error reasons)."""
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    line = storable(line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def database_error_reason(e: BaseException) -> str:
    """A one-line reason for a database error, without SQL, parameters or framework links: the driver's own
    message (e.g. ``value too long for type character varying(200)``) with its exception class."""
    orig = getattr(e, "orig", None) or e.__cause__ or e
    return f"{type(orig).__name__}: {one_line(str(orig)) or 'no message'}"
