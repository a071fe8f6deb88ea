"""Inputs of the trace kinds (issue 18): traces as evidence, read from a Jaeger query API or a Tempo-compatible one.

Registered into server/runbooks/kinds.py, imported by server/runbooks/catalog.py; the implementations are
workers/steps/trace_get.py and trace_search.py, sharing workers/toolkit/traces.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator

from server.durations import Duration
from server.runbooks.kinds import StepInputs, register_kind

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class TraceBackend(StepInputs):
    url: str = Field(description="Base URL of a Jaeger query API (http://jaeger:16686) or of Tempo (http://tempo:3200).",
                     pattern=r"^https?://.+")
    api: Literal["auto", "jaeger", "tempo"] = Field(
        "auto", description="Which API answers; auto tells Jaeger's JSON from OTLP JSON by its shape.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (e.g. Authorization).")
    timeout: Duration = Field(timedelta(seconds=30), description="Request timeout.")
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=MAX_RESPONSE_BYTES,
                           description="Read at most this much of the answer; a larger one fails the step.")


class TraceGetInputs(TraceBackend):
    trace_id: str = Field(description="The trace's id: 1 to 32 hex digits (e.g. a run's trace_id).",
                          pattern=r"^[0-9a-fA-F]{1,32}$")
    span_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{1,16}$", description=(
        "Read only this span's subtree, e.g. steps.reproduce.outputs.span_id: the request an http.request step "
        "made, without the rest of the run's trace."))
    top: int = Field(5, ge=1, le=100, description="How many of the slowest spans to list.")
    fail_on_error_spans: bool = Field(False, description="Fail the step when any span is in error.")
    require_services: list[str] = Field(default_factory=list, description=(
        "Fail unless spans of these services are in the trace (empty names are ignored): with `retry:`, "
        "waits for spans that other services export late."))
    require_spans: list[str] = Field(default_factory=list, description="Fail unless spans of these names are in it.")


class TraceSearchInputs(TraceBackend):
    service: str | None = Field(None, description="Service name (Jaeger requires one).")
    operation: str | None = Field(None, description="Span (operation) name.")
    min_duration: Duration | None = Field(None, description="Only traces at least this long.")
    max_duration: Duration | None = Field(None, description="Only traces at most this long.")
    since: Duration = Field(timedelta(hours=1), description="Time window: from this long ago until now.")
    tags: dict[str, str] = Field(default_factory=dict, description="Span attributes (tags) that must match.")
    limit: int = Field(20, ge=1, le=1000, description="Most traces returned.")
    fail_if_none: bool = Field(False, description="Fail the step when no trace matches.")

    @model_validator(mode="after")
    def _durations(self) -> TraceSearchInputs:
        if self.min_duration and self.max_duration and self.min_duration > self.max_duration:
            raise ValueError("min_duration is longer than max_duration")
        return self


register_kind("trace.get", TraceGetInputs, "Read one trace from Jaeger or Tempo: critical path, slowest spans "
              "with their services, spans in error.", side_effect_free=True,
              outputs=("trace_id", "span_count", "services", "duration_ms", "root", "critical_path", "bottleneck",
                       "slowest", "slowest_span", "errors", "error_count", "span_names"))
register_kind("trace.search", TraceSearchInputs, "Find traces in Jaeger or Tempo by service, operation, minimum "
              "duration and time window.", side_effect_free=True,
              outputs=("count", "traces", "trace_ids", "slowest_trace_id"))
