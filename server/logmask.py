"""Mask every known secret value of a run in every log record the process writes.

Secret params are masked in run outputs by the engine, but a library may log them on its own: httpx logs
each request's URL at INFO, `?token=...` included. Each Run row the process reads (a worker claiming a run,
the api creating one) registers its secret values here; a filter on the log handler replaces them, as given
and URL-encoded, in the message and in every string field of the record. Loggers that print URLs are kept
at WARNING besides.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, quote_plus

from server.redaction import MASK

URL_LOGGERS = ("httpx", "httpcore", "urllib3", "requests", "kombu.connection")
MIN_LENGTH = 4  # shorter values would mask half of every line: secret params refuse them (runbooks/params.py)
MAX_VALUES = 10_000

_values: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()
_ordered: tuple[str, ...] = ()


def register(values: Any) -> None:
    """Remember secret values (a run's `secrets` mapping, or any iterable of values)."""
    global _ordered
    items = values.values() if isinstance(values, dict) else values or ()
    forms = set()
    for value in items:
        text = str(value) if value is not None else ""
        if len(text) >= MIN_LENGTH:
            forms.update({text, quote(text, safe=""), quote_plus(text)})
    if not forms - set(_values):
        return
    with _lock:
        for form in forms:
            _values[form] = None
            _values.move_to_end(form)
        while len(_values) > MAX_VALUES:
            _values.popitem(last=False)
        _ordered = tuple(sorted(_values, key=len, reverse=True))


def is_secret(value: str) -> bool:
    return value in _values


def mask(text: str) -> str:
    for value in _ordered:
        if value in text:
            text = text.replace(value, MASK)
    return text


class SecretValueFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _ordered:
            return True
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "name", "levelname", "pathname", "filename"):
                record.__dict__[key] = mask(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            masked_exc = mask(record.exc_text)
            if masked_exc != record.exc_text:
                # Formatters format exc_info again (the JSON one does): keep only the masked text.
                record.exc_text, record.exc_info = masked_exc, None
        return True


def quiet_url_loggers() -> None:
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def watch_runs() -> None:
    """Register the secrets of every Run row this process builds (claims read rows into Run objects)."""
    from sqlalchemy import event

    from server.runs.models import Run

    def _on_init(_target: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("secrets"):
            register(kwargs["secrets"])

    if not event.contains(Run, "init", _on_init):
        event.listen(Run, "init", _on_init)
