"""Numbers that come from outside as text or path segments: database ids, cursors, event ids, timestamps.

`str.isdigit()` is true for '²' (superscript two), which int() then refuses or reads as another number, and Python's
int has no upper bound while the database's BIGINT stops at 2^63-1 (SQLite raised OverflowError: a 500).
Only ASCII digits, at most 2^63-1.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path, Query

from server.errors import InvalidInput

MAX_ID = 2**63 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")

# Path and query parameters that name a row: validated (422) before any query.
PathId = Annotated[int, Path(ge=0, le=MAX_ID)]
QueryId = Annotated[int, Query(ge=0, le=MAX_ID)]


def is_id(text: str | None) -> bool:
    return text is not None and _ASCII_DIGITS.fullmatch(text) is not None and int(text) <= MAX_ID


def parse_id(text: str, field: str, what: str) -> int:
    """The id text stands for; InvalidInput naming the field otherwise."""
    if not is_id(text):
        raise InvalidInput(f"{field} must be {what}", details=[{"field": field, "message": f"not {what}"}])
    return int(text)
