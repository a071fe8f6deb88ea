"""Issue 15, finding 3: a run's secret values are masked in every log record, whoever logs them."""

from __future__ import annotations

import io
import json
import logging

from server import logmask
from server.logs import configure_logging
from server.runs.models import Run


def test_every_record_masks_a_runs_secrets_and_url_loggers_stay_quiet():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", stream)
        logmask.watch_runs()
        secret = "pin-8731-Ab/c d"
        Run(runbook_id="r", secrets={"pin": secret})  # what a worker's claim does with a run's row
        log = logging.getLogger("runbookd.test")
        log.info("calling %s", f"https://x/?token={secret}")
        log.warning("quoted https://x/?token=%s", "pin-8731-Ab%2Fc%20d")
        log.info("field", extra={"url": f"https://x/?t={secret}"})
        try:
            raise ValueError(f"bad {secret}")
        except ValueError:
            log.exception("failed")
        logging.getLogger("httpx").info("HTTP Request: GET https://x/?token=other-secret")
        text = stream.getvalue()
        lines = [json.loads(line) for line in text.splitlines()]
        assert secret not in text and "pin-8731-Ab%2Fc%20d" not in text and "Ab" not in text.replace("***", "")
        assert len(lines) == 4 and "calling https://x/?token=***" in lines[0]["message"]
        assert "other-secret" not in text  # httpx is kept at WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
