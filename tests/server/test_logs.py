"""JSON log lines carry the request id and never a secret."""

from __future__ import annotations

import io
import json
import logging

from server.context import request_id_var
from server.logs import configure_logging
from server.redaction import redact


def test_json_line_has_the_fields_and_masks_secrets():
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", stream=stream)
        token = request_id_var.set("req-42")
        logging.getLogger("runbookd.test").info(
            "calling %s", "upstream",
            extra={"headers": {"Authorization": "Bearer rbd_secret", "Accept": "json"}, "api_token": "rbd_x",
                   "attempt": 2},
        )
        request_id_var.reset(token)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = json.loads(stream.getvalue().strip())
    assert line["message"] == "calling upstream"
    assert line["level"] == "INFO" and line["logger"] == "runbookd.test" and line["request_id"] == "req-42"
    assert line["timestamp"].endswith("+00:00")
    assert line["headers"] == {"Authorization": "***", "Accept": "json"}
    assert line["api_token"] == "***" and line["attempt"] == 2
    assert "rbd_" not in stream.getvalue()


def test_redact_walks_nested_structures():
    value = {"a": [{"password": "p", "ok": 1}], "client_secret": None, "nested": {"X-Api-Key": "k"}}
    assert redact(value) == {"a": [{"password": "***", "ok": 1}], "client_secret": None,
                             "nested": {"X-Api-Key": "***"}}
