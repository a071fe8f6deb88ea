"""Keep secrets out of logs, audit events, step outputs and chat."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
SECRET_KEY = re.compile(r"(token|password|passwd|secret|authorization|api[_-]?key|cookie|signature)", re.I)


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def redact(value: Any, extra_keys: frozenset[str] = frozenset()) -> Any:
    """Return a copy of value with every mapping entry whose key looks secret masked."""
    if isinstance(value, dict):
        return {
            k: MASK if (isinstance(k, str) and (k in extra_keys or is_secret_key(k))) and v is not None
            else redact(v, extra_keys)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, extra_keys) for v in value]
    return value
