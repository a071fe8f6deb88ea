"""server/tracing.py in a process of its own with tracing on, exporting to the loopback receiver: what the
engine's two hooks record, and that a run's secrets never reach a span through a step's HTTP call."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO
from tests.tracing.receiver import otlp_receiver, wait_spans

SCRIPT = r"""
import sys, threading, types
import httpx
from server import tracing
from server.redaction import MASK
assert tracing.setup("worker")
secret = "hunter2-s3cret"
run = types.SimpleNamespace(runbook_id="rb", traceparent=sys.argv[2], status="failed", error="step 'call' failed")
ex = types.SimpleNamespace(run=run, run_id=42, queue="default", scrub=lambda v: v.replace(secret, MASK))
spec = types.SimpleNamespace(id="call", phase="observe", uses="http.request")
row = types.SimpleNamespace(status="failed", attempts=2, error="boom")
with tracing.run_span(ex), tracing.step_span(ex, spec, row):
    def call():  # the engine runs a step on a thread of its own
        httpx.get(sys.argv[1] + "/nothing?token=" + secret, timeout=5)
    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
tracing.shutdown()
print("done")
"""


def test_run_and_step_spans_continue_the_stored_trace_and_hide_secrets(tmp_path):
    stored_trace, stored_span = "ab" * 16, "cd" * 8
    with otlp_receiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="")
        result = subprocess.run([sys.executable, "-c", SCRIPT, receiver.url, f"00-{stored_trace}-{stored_span}-01"],
                                capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert result.returncode == 0 and "done" in result.stdout, result.stderr
        wait_spans(receiver, lambda: len(receiver.spans) >= 3)
        spans = {s.name: s for s in receiver.spans}
        run, step, client = spans["run rb"], spans["step call"], spans["GET"]
        # Resumed outside its trace (no current span here): the run continues the trace stored on it.
        assert run.trace_id == stored_trace and run.parent_id == stored_span
        assert step.parent_id == run.span_id and client.parent_id == step.span_id
        assert run.resource_attr("runbookd.role") == "worker" and run.service == "runbookd"
        assert step.attr("runbookd.step.status") == "failed" and step.attr("runbookd.step.attempt") == 2
        assert step.span.status.code == step.span.status.STATUS_CODE_ERROR
        assert run.span.status.message == "step 'call' failed"
        urls = [client.attr(name) for name in ("url.full", "http.url") if client.attr(name)]
        assert urls and all("hunter2" not in url and "token=***" in url for url in urls), urls
        assert not any("hunter2" in str(a.value) for s in receiver.spans for a in s.span.attributes)
