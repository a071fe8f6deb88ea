"""runbookd traced end to end: a real api, worker and faulty-service, each a process exporting OTLP/HTTP to a
loopback receiver that decodes the protobuf; then trace.get reading that same trace back in Jaeger's and
Tempo's shapes (issue 18's proof). And the same stack with tracing off exports nothing at all."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.runbooks.trace_kinds import TraceGetInputs
from server.settings import SHIPPED_RUNBOOKS_DIR, Settings
from server.stack import die_with_parent, free_port
from server.tracing import QUIET_ROOT_PREFIXES
from tests.conftest import TEST_ACTOR, subprocess_env
from tests.support import REPO, http, stop_process, wait_for, wait_run
from tests.tracing.receiver import Received, Receiver, otlp_receiver, wait_spans
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.trace_get import TraceGet

pytestmark = pytest.mark.slow
SERVICE_APP = REPO / "examples" / "faulty-service" / "app.py"


@dataclass
class Stack:
    url: str
    operator: httpx.Client
    service_url: str
    service_log: Path
    home: Path


def _env(base: dict[str, str], receiver: Receiver | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    if receiver is not None:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    return env


def _healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


@contextlib.contextmanager
def traced_stack(home: Path, redis_url: str, redis_prefix: str, receiver: Receiver | None) -> Iterator[Stack]:
    """api, worker and faulty-service as processes; tracing on when a receiver is given, off otherwise."""
    database = f"sqlite:///{home / 'runbookd.sqlite3'}"
    upgrade(database)
    settings = Settings(home=home, database_url=database, redis_url=redis_url,
                        redis_prefix=f"{redis_prefix}tr{uuid.uuid4().hex[:6]}:", runbooks_dir=SHIPPED_RUNBOOKS_DIR,
                        artifacts_dir=home / "artifacts")
    engine = make_engine(database)
    with session_scope(engine) as session:
        _t, operator_token = auth.create_token(session, name="trace-op", role=Role.operator, actor=TEST_ACTOR)
        _t, client_token = auth.create_token(session, name="trace-svc", role=Role.client, actor=TEST_ACTOR)
    engine.dispose()
    port = free_port()
    env = _env(subprocess_env(settings, RUNBOOKD_HOST="127.0.0.1", RUNBOOKD_PORT=str(port),
                              RUNBOOKD_RUNBOOKS_DIR=str(SHIPPED_RUNBOOKS_DIR), RUNBOOKD_LOG_FORMAT="json",
                              RUNBOOKD_ARTIFACTS_DIR=str(home / "artifacts"), RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5"),
               receiver)
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env={**env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent)
        procs.append(proc)
        return proc

    try:
        api = spawn([sys.executable, "-m", "server.cli", "api"], home / "api.log")
        worker = spawn([sys.executable, "-m", "server.cli", "worker", "--concurrency", "1",
                        "--hostname", f"trace-{uuid.uuid4().hex[:6]}@%h"], home / "worker.log")
        wait_for(lambda: _healthy(f"{url}/healthz", api, home / "api.log"), 60, "the api")
        wait_for(lambda: b" ready." in (home / "worker.log").read_bytes() or worker.poll() is not None, 60, "worker")
        assert worker.poll() is None, (home / "worker.log").read_text()
        with http(url, operator_token) as operator:
            created = operator.post("/api/v1/flags", json={
                "key": "faulty-slow", "type": "boolean", "variants": {"on": True, "off": False},
                "default_variant": "off", "environments": {"production": {
                    "enabled": True, "rules": [{"conditions": [], "variant": "on"}]}}, "reason": "tracing e2e"})
            assert created.status_code == 201, created.text
            service_home = home / "faulty"
            service_home.mkdir()
            service_port = free_port()
            service = spawn([sys.executable, str(SERVICE_APP), "--port", str(service_port)], home / "faulty.log", {
                "RUNBOOKD_URL": url, "RUNBOOKD_TOKEN": client_token, "FAULTY_HOME": str(service_home),
                "FAULTY_LOG": str(service_home / "faulty.jsonl"), "FAULTY_PID_FILE": str(service_home / "pid")})
            service_url = f"http://127.0.0.1:{service_port}"
            wait_for(lambda: _healthy(f"{service_url}/healthz", service, home / "faulty.log"), 30, "faulty-service")
            wait_for(lambda: httpx.get(f"{service_url}/api/orders/3", timeout=10).elapsed.total_seconds() > 0.7, 15,
                     "the slow fault to take effect")
            yield Stack(url, operator, service_url, service_home / "faulty.jsonl", home)
    finally:
        for proc in reversed(procs):
            stop_process(proc, grace=10)


def _start(stack: Stack, params: dict, headers: dict[str, str] | None = None) -> dict:
    response = stack.operator.post("/api/v1/runs", json={"runbook": "latency-regression", "params": params},
                                   headers=headers or {})
    assert response.status_code == 202, response.text
    return wait_run(stack.operator, response.json()["id"], timeout=90)


def _ancestors(span: Received, by_id: dict[str, Received]) -> list[str]:
    names, seen = [], set()
    while span.parent_id in by_id and span.parent_id not in seen:
        seen.add(span.parent_id)
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_a_run_is_one_trace_from_the_callers_traceparent_into_the_faulty_service(tmp_path, redis_url, redis_prefix):
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with otlp_receiver() as receiver, traced_stack(tmp_path, redis_url, redis_prefix, receiver) as stack:
        done = _start(stack, {"base_url": stack.service_url, "path": "/api/orders/5", "logs": str(stack.service_log),
                              "threshold_ms": 500, "trace_api": f"{receiver.url}/jaeger",
                              "traced_service": "faulty-service"},
                      headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
        assert done["status"] == "succeeded", done
        assert done["trace_id"] == trace_id  # the run API shows it
        by_step = {s["step_id"]: s for s in done["steps"]}
        assert by_step["reproduce"]["outputs"]["trace_id"] == trace_id
        # The runbook's trace step read the slow request's trace from the Jaeger-shaped API and named the span.
        assert by_step["trace"]["status"] == "succeeded", by_step["trace"]
        assert done["outputs"]["slow_span"] == "fetch_order_from_db", by_step["trace"]["outputs"]["slowest"]
        assert done["outputs"]["slow_span_service"] == "faulty-service"

        wait_spans(receiver, lambda: any(s.name == "run latency-regression" for s in receiver.trace(trace_id)))
        spans = receiver.trace(trace_id)
        by_id = {s.span_id: s for s in spans}
        named = {s.name: s for s in spans}
        api = next(s for s in spans if s.parent_id == caller_span)  # the trace continues the caller's
        assert api.name == "POST /api/v1/runs" and api.service == "runbookd"
        assert api.resource_attr("runbookd.role") == "api" and api.resource_attr("service.instance.id")
        run = named["run latency-regression"]
        assert run.resource_attr("runbookd.role") == "worker" and run.service == "runbookd"
        assert run.attr("runbookd.run.id") == done["id"] and run.attr("runbookd.runbook") == "latency-regression"
        assert api.name in _ancestors(run, by_id)  # through the Celery task headers: publish -> task span
        assert "run/runbookd.runs.execute" in _ancestors(run, by_id)
        for step in ("reproduce", "over-threshold", "slow-queries", "p99", "trace", "summary"):
            span = named[f"step {step}"]
            assert span.parent_id == run.span_id, step
            assert span.attr("runbookd.step.id") == step and span.attr("runbookd.run.id") == done["id"]
            assert span.attr("runbookd.runbook") == "latency-regression"
            assert span.attr("runbookd.step.status") == by_step[step]["status"]
            assert span.attr("runbookd.step.attempt") == by_step[step]["attempts"]
        reproduce = named["step reproduce"]
        assert reproduce.attr("runbookd.step.kind") == "http.request"
        assert reproduce.attr("runbookd.step.phase") == "reproduce"
        # The http.request step's traceparent took the trace into the faulty service: client -> server -> db.
        server = next(s for s in spans if s.service == "faulty-service" and s.name == "GET /api/orders/{order_id}")
        client = by_id[server.parent_id]
        assert client.service == "runbookd" and client.parent_id == reproduce.span_id
        fetch = named["fetch_order_from_db"]
        assert fetch.service == "faulty-service" and fetch.parent_id == server.span_id
        assert (fetch.span.end_time_unix_nano - fetch.span.start_time_unix_nano) > 700_000_000
        # Database and Redis spans beneath the run.
        beneath = [s for s in spans if run.name in _ancestors(s, by_id)]
        systems = {s.attr("db.system") or s.attr("db.system.name") for s in beneath}
        assert "sqlite" in systems and "redis" in systems, systems
        # Nothing of this run went into another trace.
        strays = [s.name for t, group in receiver.traces().items() if t != trace_id for s in group
                  if s.attr("runbookd.run.id") == done["id"]]
        assert strays == []
        # Background polling (the broker, caches, beat's sweeps) starts no traces of its own.
        roots = [s for s in receiver.spans if not s.parent_id]
        assert roots and all(s.span.kind != s.span.SPAN_KIND_CLIENT for s in roots), [s.name for s in roots]
        assert not any(s.name.startswith(QUIET_ROOT_PREFIXES) for s in roots), [s.name for s in roots]

        # The same received spans served as Tempo answers (OTLP JSON, base64 ids): trace.get names the span.
        whole = TraceGet().run(TraceGetInputs(url=f"{receiver.url}/tempo", trace_id=trace_id), make_ctx(tmp_path))
        assert whole["trace_id"] == trace_id and whole["span_count"] == len(spans)
        assert {"runbookd", "faulty-service"} <= set(whole["services"])
        assert whole["root"]["name"] == "POST /api/v1/runs" and whole["error_count"] == 0
        request = TraceGet().run(TraceGetInputs(url=f"{receiver.url}/tempo", trace_id=trace_id,
                                                span_id=reproduce.span_id), make_ctx(tmp_path))
        assert request["slowest_span"] == "fetch_order_from_db" and request["slowest_service"] == "faulty-service"
        assert request["root"]["name"] == "step reproduce"
        path = [s["name"] for s in request["critical_path"]]
        assert path.index("step reproduce") < path.index(server.name) < path.index("fetch_order_from_db"), path
        assert request["bottleneck"]["name"] == "fetch_order_from_db"

        # Log lines carry the trace and span ids beside the request id.
        lines = [json.loads(line) for line in (stack.home / "worker.log").read_text().splitlines()
                 if line.startswith("{")]
        traced = [line for line in lines if line.get("trace_id") == trace_id]
        assert traced and all(len(line["span_id"]) == 16 for line in traced)
        done_line = next(line for line in traced if line["message"] == "run task done")
        assert done_line["request_id"] and done_line["run_id"] == done["id"]

        # A hostile or broken traceparent is ignored: the trace starts at the API instead, and nothing fails.
        for bad in ("00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-xyz-abc-01", "ff-" + "a" * 32 + "-" + "b" * 16
                    + "-01", "00-" + trace_id + "-" + "c" * 16 + "-01" + "x" * 4000):
            response = stack.operator.post("/api/v1/runs", json={"runbook": "latency-regression", "dry_run": True,
                                                                 "params": {"base_url": stack.service_url,
                                                                            "logs": "x"}},
                                           headers={"traceparent": bad})
            assert response.status_code == 202, response.text
            fresh = wait_run(stack.operator, response.json()["id"], timeout=60)
            assert fresh["status"] == "succeeded" and fresh["trace_id"] not in (None, trace_id, "0" * 32), bad


def test_tracing_off_exports_nothing_and_records_no_span(tmp_path, redis_url, redis_prefix):
    with otlp_receiver() as receiver, traced_stack(tmp_path, redis_url, redis_prefix, None) as stack:
        done = _start(stack, {"base_url": stack.service_url, "path": "/api/orders/5", "logs": str(stack.service_log),
                              "trace_api": f"{receiver.url}/jaeger"},
                      headers={"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"})
        assert done["status"] == "succeeded", done
        assert done["trace_id"] is None
        by_step = {s["step_id"]: s for s in done["steps"]}
        assert by_step["reproduce"]["outputs"]["trace_id"] is None
        assert by_step["trace"]["status"] == "skipped"  # the runbook's trace step skips cleanly
        assert done["outputs"]["slow_span"] is None
        time.sleep(1)  # any exporter would have sent within its 100 ms schedule by now
        assert receiver.requests == 0 and receiver.spans == []
        lines = [json.loads(line) for line in (stack.home / "worker.log").read_text().splitlines()
                 if line.startswith("{")]
        assert lines and not any("trace_id" in line for line in lines)


def test_tracing_off_in_process_installs_nothing(tmp_path):
    """Without OTEL_* variables: no SDK imported, no provider, no exporter, no instrumentation, null spans."""
    script = """
import sys
from server import tracing
from server.app import create_app
from server.settings import Settings
app = create_app(Settings(home=sys.argv[1], database_url="sqlite:///" + sys.argv[1] + "/x.db"))
import workers.engine, workers.celery_app, workers.steps.http_request
from opentelemetry import trace
assert not tracing.setup("worker") and not tracing.enabled()
assert tracing.run_span(None) is tracing.step_span(None, None, None)  # one shared null context
assert tracing.log_ids() is None and tracing.current_traceparent() is None
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
# (redis-py imports opentelemetry.sdk.metrics for its own observability when it is installed: not ours)
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter",
                                                        "opentelemetry.instrumentation")))
assert loaded == [], loaded
print("untraced")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RUNBOOKD_"))}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=180)
    assert result.returncode == 0 and "untraced" in result.stdout, result.stderr
    # And the same process with the endpoint set is traced: the switch is the environment.
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    result = subprocess.run([sys.executable, "-c", "from server import tracing; assert tracing.setup('api'); "
                             "import sys; assert 'opentelemetry.sdk.trace' in sys.modules; print('traced')"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert result.returncode == 0 and "traced" in result.stdout, result.stderr
