"""JSON structured logs: one object a line with timestamp, level, logger, message, request_id and fields."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from server import logmask, tracing
from server.context import request_id_var
from server.redaction import MASK, is_secret_key, redact


class ContextFilter(logging.Filter):
    """Stamp the current request id on each record and mask secret-looking extra fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        ids = tracing.log_ids()  # None unless tracing is on and a span is current
        if ids is not None:
            record.trace_id, record.span_id = ids
        for name in _DROPPED:
            record.__dict__.pop(name, None)
        for key, value in list(record.__dict__.items()):
            if key in _RESERVED:
                continue
            if is_secret_key(key):
                record.__dict__[key] = MASK
            elif isinstance(value, dict | list):
                record.__dict__[key] = redact(value)
        return True


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "request_id",
                                                                              "trace_id", "span_id"}
_DROPPED = ("color_message",)  # uvicorn's ANSI-coloured copy of the message


class _Formatter(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record.setdefault("request_id", getattr(record, "request_id", None))


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Replace the root handlers with one that writes JSON lines (or plain text) to stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(logmask.SecretValueFilter())
    if fmt == "json":
        handler.setFormatter(_Formatter("%(message)s", json_ensure_ascii=False))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logmask.quiet_url_loggers()
