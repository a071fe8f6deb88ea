"""Regular expressions from users, run by RE2: linear time, so no pattern can stall a process.

Python's `re` backtracks: the flag rule `^(a+)+$` against 23 characters took 0.41 s on the api's event loop,
and each added character doubled it. RE2 (google-re2) never backtracks; it refuses what it cannot run in
linear time (backreferences, lookaround), and that refusal is a clear error to whoever gave the pattern.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

MAX_PATTERN = 2000  # characters
MAX_MEMORY = 8 << 20  # bytes RE2 may use for one compiled pattern


class InvalidPattern(ValueError):
    pass


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # errors come back as exceptions; RE2's own stderr logging would duplicate them
    options.max_mem = MAX_MEMORY
    return options


@lru_cache(maxsize=1024)
def compile(pattern: str | bytes) -> Any:
    """A compiled RE2 pattern with re's search/match/fullmatch/finditer; InvalidPattern says why not."""
    if len(pattern) > MAX_PATTERN:
        raise InvalidPattern(f"regular expression is too long ({len(pattern)} characters, at most {MAX_PATTERN})")
    try:
        return re2.compile(pattern, options=_options())
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        shown = pattern if isinstance(pattern, str) else pattern.decode(errors="replace")
        raise InvalidPattern(f"invalid regular expression {shown[:200]!r}: {reason} (patterns run on RE2: "
                             "no backreferences or lookaround)") from None


def searcher(pattern: str) -> Any:
    """`text -> bool`: does the pattern occur in text? The hot path of a flag rule: RE2's matcher called
    directly (about 1 us), not its re-compatible search(), which builds a match object (about 7 us)."""
    compiled = compile(pattern)
    match, unanchored, null = compiled._regexp.Match, re2._Anchor.UNANCHORED, re2._NULL_SPAN

    def found(text: str) -> bool:
        raw = text.encode(errors="surrogatepass")  # a lone surrogate (valid JSON) never matches, never raises
        return bool(match(unanchored, raw, 0, len(raw))[0] != null)

    return found
