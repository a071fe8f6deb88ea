"""Distributed tracing (issue 18): OpenTelemetry, on only when the standard OTLP variables say where to export.

Tracing is on when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set (and neither
OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none). Off, nothing of OpenTelemetry's SDK is even imported:
no provider, no exporter, no instrumentation; run_span()/step_span() hand back one shared null context and
log_ids() returns None, so the engine and the log filter pay one function call (see bench/run_dispatch.py).

On, each process exports OTLP/HTTP protobuf (the exporter reads the other OTEL_EXPORTER_OTLP_* variables
itself: headers, timeout, compression) with a resource naming it: service.name runbookd (or
OTEL_SERVICE_NAME), service.instance.id, and runbookd.role = api, worker or beat. Instrumented: FastAPI
(honours an incoming traceparent; without one the trace starts at the API), Celery (the worker's task spans,
continuing the context the task headers carry), httpx (so http.request and http.replay send traceparent),
SQLAlchemy, Redis and threads (a step's thread continues its step's span).

A run is one trace: the API stores the request's traceparent on the run (runs.traceparent) and injects it
into the task's headers; the worker's run span continues it, even when the run resumes from another task
(an approval, a hand-over, a redelivery), with one child span per step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.runbooks.schema import StepSpec
    from server.runs.models import StepRun
    from workers.engine import Execution

log = logging.getLogger("runbookd.tracing")

ROLE_ATTRIBUTE = "runbookd.role"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
# Root spans not worth a trace of their own, besides client calls (see _quiet_roots): beat's periodic sweeps.
# (Flag and log-level expiries run in beat's own thread, no task: their database and Redis calls are client roots.)
QUIET_ROOT_PREFIXES = ("run/runbookd.chat.followups", "run/runbookd.runs.relay", "run/runbookd.runs.reap",
                       "run/runbookd.beat_heartbeat", "run/runbookd.audit_retention", "run/runbookd.ping",
                       "run/runbookd.triggers.schedules")

DEFAULT_EXCLUDED_URLS = "healthz,readyz,metrics,ofrep/v1"
_NULL = contextlib.nullcontext()
_provider: Any = None  # the process's TracerProvider once setup() turned tracing on
_tracer: Any = None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def enabled() -> bool:
    return _provider is not None


def setup(role: str, *, service_name: str = "runbookd", instrument: bool = True) -> bool:
    """Turn tracing on for this process when the environment asks for it; True when on. Idempotent."""
    global _provider, _tracer
    if _provider is not None:
        return True
    if not wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    attributes: dict[str, Any] = {"service.instance.id": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                                  ROLE_ATTRIBUTE: role}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes), sampler=ParentBased(root=_quiet_roots()))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("runbookd")
    if instrument:
        _instrument(role)
    log.info("tracing on", extra={"role": role, "endpoint": os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                                  or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")})
    return True


def _instrument(role: str) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    HTTPXClientInstrumentor().instrument(request_hook=_scrub_http_span, async_request_hook=_scrub_http_span_async)
    # SQL: server.db.make_engine hands each engine to traced_engine() (the instrumentor's global patch of
    # create_engine misses SQLModel's reference, and refuses SQLAlchemy releases it has not been tested on).
    RedisInstrumentor().instrument()
    ThreadingInstrumentor().instrument()
    if role == "worker":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    else:
        # The api and beat send tasks by name without importing them, and the Celery instrumentation then
        # never ends its publish span; these processes only put the current context into the headers.
        from celery.signals import before_task_publish

        before_task_publish.connect(_inject_into_task_headers, weak=False)


SCRUB_KEY = "runbookd.scrub"  # in the OpenTelemetry context while a step runs: the run's secret masker
URL_ATTRIBUTES = ("url.full", "http.url")


def _scrub_http_span(span: Any, request: Any) -> None:
    """A step's secret param values never reach a trace through the URL an http.request step called."""
    from opentelemetry import context

    scrub = context.get_value(SCRUB_KEY)
    if not callable(scrub) or not span.is_recording():
        return
    url = str(getattr(request, "url", ""))
    clean = scrub(url)
    if clean != url:
        for name in URL_ATTRIBUTES:
            span.set_attribute(name, clean)


async def _scrub_http_span_async(span: Any, request: Any) -> None:
    _scrub_http_span(span, request)


def _inject_into_task_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and "traceparent" not in headers:
        from opentelemetry.propagate import inject

        inject(headers)


def _quiet_roots() -> Any:
    """A root sampler taking every root span except those that would only be noise as a trace of their own."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class QuietRoots(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
            # A client call (SQL, Redis, HTTP) outside any request, task or run: a background loop's polling.
            quiet = kind == SpanKind.CLIENT or name.startswith(QUIET_ROOT_PREFIXES)
            return (ALWAYS_OFF if quiet else ALWAYS_ON).should_sample(parent_context, trace_id, name, kind,
                                                                      attributes, links, trace_state)

        def get_description(self) -> str:
            return "QuietRoots"

    return QuietRoots()


def traced_engine(engine: Any) -> Any:
    """SQL spans for an engine of server.db.make_engine: the SQLAlchemy instrumentation patches create_engine,
    but server.db holds SQLModel's reference to it, bound before tracing is set up; so its engines are
    handed to the instrumentation's own EngineTracer (what the patched create_engine would do)."""
    if _provider is not None:
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.metrics import get_meter

        usage = get_meter("runbookd").create_up_down_counter("db.client.connections.usage", unit="connections")
        EngineTracer(_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, usage)
    return engine


def shutdown() -> None:
    """Flush what is buffered (a process about to exit)."""
    if _provider is not None:
        _provider.force_flush(5000)


# -- the api -----------------------------------------------------------------------------------------
def instrument_app(app: FastAPI) -> None:
    """The api's server spans, continuing an incoming traceparent (role api)."""
    if not setup("api"):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # One span per request, without ASGI's per-message receive/send spans. Flag evaluations (OFREP, the hot
    # path: bench/flag_eval.py) are left out unless OTEL_PYTHON_FASTAPI_EXCLUDED_URLS says otherwise: services
    # evaluate flags all the time, and each evaluation would otherwise be a trace of its own.
    excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or DEFAULT_EXCLUDED_URLS
    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, excluded_urls=excluded,
                                       exclude_spans=["receive", "send"])


def current_traceparent() -> str | None:
    """The current span as a W3C traceparent, to store on a new run; None when off or outside a span."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    match = TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span for a log line; None when off or outside a span."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# -- the engine: one context manager per run, one per step -------------------------------------------
def run_span(ex: Execution) -> contextlib.AbstractContextManager[Any]:
    """The run's span for this stretch of execution, in the run's own trace (see module doc)."""
    if _tracer is None:
        return _NULL
    return _run_span(ex)


@contextlib.contextmanager
def _run_span(ex: Execution) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    current = trace.get_current_span().get_span_context()
    parent, links = None, None
    stored = TRACEPARENT.match(getattr(ex.run, "traceparent", None) or "")
    if stored and (not current.is_valid or f"{current.trace_id:032x}" != stored.group(1)):
        # Resumed by a task of another trace (an approval, the relay): continue the run's trace, link this one.
        remote = SpanContext(int(stored.group(1), 16), int(stored.group(2), 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = trace.set_span_in_context(NonRecordingSpan(remote))
        links = [Link(current)] if current.is_valid else None
    attributes = {"runbookd.runbook": ex.run.runbook_id, "runbookd.run.id": ex.run_id, "runbookd.queue": ex.queue}
    with _tracer.start_as_current_span(f"run {ex.run.runbook_id}", context=parent, links=links,
                                       attributes=attributes) as span:
        yield span
        span.set_attribute("runbookd.run.status", str(ex.run.status))
        if ex.run.status in ("failed", "timed_out"):
            span.set_status(Status(StatusCode.ERROR, ex.run.error or ex.run.status))


def step_span(ex: Execution, spec: StepSpec, row: StepRun) -> contextlib.AbstractContextManager[Any]:
    """A step's span, child of the run's; its status and attempt are set when the step ends."""
    if _tracer is None:
        return _NULL
    return _step_span(ex, spec, row)


@contextlib.contextmanager
def _step_span(ex: Execution, spec: StepSpec, row: StepRun) -> Iterator[Any]:
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    attributes = {"runbookd.runbook": ex.run.runbook_id, "runbookd.run.id": ex.run_id,
                  "runbookd.step.id": spec.id, "runbookd.step.phase": spec.phase or "",
                  "runbookd.step.kind": spec.uses}
    with _tracer.start_as_current_span(f"step {spec.id}", attributes=attributes) as span:
        token = context.attach(context.set_value(SCRUB_KEY, ex.scrub))  # carried into the step's thread
        try:
            yield span
        finally:
            context.detach(token)
        span.set_attribute("runbookd.step.status", str(row.status))
        span.set_attribute("runbookd.step.attempt", row.attempts)
        if row.status in ("failed", "timed_out"):
            span.set_status(Status(StatusCode.ERROR, row.error or row.status))
