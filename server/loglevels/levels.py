"""Log level names as Spring Boot Actuator spells them (OFF, FATAL, ERROR, WARN, INFO, DEBUG, TRACE).

The table itself lives in server.agent, which must stay a single vendorable file.
"""

from __future__ import annotations

import logging

from server.agent import LEVELS, OFF, ROOT, TRACE, get_logger

ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL"}
VERBOSE = frozenset({"DEBUG", "TRACE"})  # levels that flood logs: only ever granted for a while


def canonical(name: str) -> str:
    """'warning' -> 'WARN'; ValueError listing the accepted names otherwise."""
    upper = name.strip().upper()
    upper = ALIASES.get(upper, upper)
    if upper not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVELS)}")
    return upper


def to_name(number: int) -> str | None:
    """The Actuator name of a Python level number; None for NOTSET (the logger inherits its parent's)."""
    if number == logging.NOTSET:
        return None
    for name, value in LEVELS.items():
        if number >= value:
            return name
    return "TRACE"


__all__ = ["ALIASES", "LEVELS", "OFF", "ROOT", "TRACE", "VERBOSE", "canonical", "get_logger", "to_name"]
