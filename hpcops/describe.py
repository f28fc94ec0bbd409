"""How a value or a character is named in a message: "a newline", "the integer 3", "'gpu'".

Shared by the YAML reader, the spec's field checks and the translation of pydantic's errors, so
that a message says the same thing about the same value wherever it was caught.
"""

from __future__ import annotations

import re

# The CLI's fast entry imports this module (through hpcops.specfile): typing is for mypy only
# (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

__all__ = ["CONTROL_RE", "describe_char", "describe_value", "id_ranges", "show"]

_CHAR_NAMES: Final = {
    "\n": "a newline",
    "\r": "a carriage return",
    "\t": "a tab",
    " ": "a space",
    "'": "a quote (')",
    '"': 'a double quote (")',
    "`": "a backtick (`)",
    "$": "a dollar sign ($)",
    ";": "a semicolon (;)",
    "#": "a '#'",
    "\\": "a backslash (\\)",
    "\x00": "a NUL byte",
}

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: none belongs
# in a spec value (YAML 1.1 even treats U+0085, U+2028 and U+2029 as line breaks).
CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def describe_char(ch: str) -> str:
    if ch in _CHAR_NAMES:
        return _CHAR_NAMES[ch]
    if CONTROL_RE.match(ch):
        return f"the control character U+{ord(ch):04X}"
    if not ch.isascii():
        return f"the non-ASCII character {ch!r} (U+{ord(ch):04X})"
    return f"{ch!r}"


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis: the one bound on a text that came
    from outside (a request, a job's file) and is recorded or shown."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(text: str, limit: int = 60) -> str:
    """`text` quoted as Python would, cut to `limit` characters."""
    return clip(repr(text), limit)


def describe_value(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {show(value)}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def id_ranges(ids: Iterable[int]) -> str:
    """`12-20,23`: run ids as ranges, in order (what `hpcops submit` prints of a sweep's runs)."""
    numbers = sorted(set(ids))
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if start is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ",".join(parts)
