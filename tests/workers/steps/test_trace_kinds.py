"""trace.get and trace.search against real OTLP spans: exported by the OpenTelemetry SDK (its own providers, not
the process's) over OTLP/HTTP to the tests' loopback receiver, then served back in Jaeger's and Tempo's shapes.
Plus what a hostile or broken trace API answers: huge, truncated, wrongly shaped, deeply nested, cyclic."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from pydantic import ValidationError

from server.runbooks.trace_kinds import TraceGetInputs, TraceSearchInputs
from server.runbooks.validation import check_text
from tests.support import free_port_url
from tests.tracing.receiver import otlp_receiver, wait_spans
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.trace_get import TraceGet
from workers.steps.trace_search import TraceSearch
from workers.toolkit import traces

MS = 1_000_000


def _provider(receiver_url: str, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver_url}/v1/traces")))
    return provider


@pytest.fixture(scope="module")
def shop():
    """A checkout trace over two services: gateway -> shop (-> a 300 ms query, a failing cache call)."""
    with otlp_receiver() as receiver:
        gateway, shop = _provider(receiver.url, "gateway"), _provider(receiver.url, "shop")
        t0 = time.time_ns() - 5_000 * MS
        root = gateway.get_tracer("t").start_span("GET /checkout", kind=SpanKind.SERVER, start_time=t0)
        server = shop.get_tracer("t").start_span("POST /orders", context=set_span_in_context(root),
                                                  kind=SpanKind.SERVER, start_time=t0 + 10 * MS)
        inside = set_span_in_context(server)
        cache = shop.get_tracer("t").start_span("cache.get", context=inside, start_time=t0 + 20 * MS)
        cache.set_status(Status(StatusCode.ERROR, "cache timed out"))
        cache.end(end_time=t0 + 70 * MS)
        query = shop.get_tracer("t").start_span("fetch_order_from_db", context=inside, start_time=t0 + 80 * MS)
        query.end(end_time=t0 + 380 * MS)
        server.end(end_time=t0 + 400 * MS)
        root.end(end_time=t0 + 420 * MS)
        # A second, quick trace of the gateway alone.
        gateway.get_tracer("t").start_span("GET /healthz", start_time=t0).end(end_time=t0 + 2 * MS)
        wait_spans(receiver, lambda: len(receiver.spans) == 5)
        yield receiver, f"{root.get_span_context().trace_id:032x}"
        gateway.shutdown()
        shop.shutdown()


@pytest.mark.parametrize("shape", ["jaeger", "tempo"])
def test_trace_get_reads_both_shapes_alike(shop, shape, tmp_path):
    receiver, trace_id = shop
    ctx = make_ctx(tmp_path)
    out = TraceGet().run(TraceGetInputs(url=f"{receiver.url}/{shape}", trace_id=trace_id, top=3), ctx)
    assert out["trace_id"] == trace_id and out["span_count"] == 4
    assert out["services"] == ["gateway", "shop"] and out["duration_ms"] == 420
    assert out["root"]["name"] == "GET /checkout" and out["root"]["service"] == "gateway"
    assert out["slowest_span"] == "fetch_order_from_db" and out["slowest_service"] == "shop"
    assert [(s["name"], s["self_ms"]) for s in out["slowest"]] == [
        ("fetch_order_from_db", 300), ("cache.get", 50), ("POST /orders", 40)]
    # Backwards from the root's end: the query finished last, the cache call before it.
    assert [(s["name"], s["on_path_ms"]) for s in out["critical_path"]] == [
        ("GET /checkout", 30), ("POST /orders", 40), ("cache.get", 50), ("fetch_order_from_db", 300)]
    assert out["bottleneck"]["name"] == "fetch_order_from_db"
    assert out["error_count"] == 1 and out["errors"][0]["name"] == "cache.get"
    assert out["errors"][0]["error"] == "cache timed out" or shape == "jaeger"
    assert "fetch_order_from_db" in out["span_names"]
    assert "slowest fetch_order_from_db (shop)" in ctx.lines[-1]


def test_trace_get_options_fail_cleanly(shop, tmp_path):
    receiver, trace_id = shop
    ctx = make_ctx(tmp_path)
    with pytest.raises(StepFailed, match=r"1 span\(s\) in error, first cache\.get \(shop\)") as failed:
        TraceGet().run(TraceGetInputs(url=f"{receiver.url}/jaeger", trace_id=trace_id, fail_on_error_spans=True), ctx)
    assert failed.value.outputs["slowest_span"] == "fetch_order_from_db"
    with pytest.raises(StepFailed, match=r"has no service billing \(yet\)"):
        TraceGet().run(TraceGetInputs(url=f"{receiver.url}/tempo", trace_id=trace_id,
                                      require_services=["shop", "", "billing"]), ctx)
    with pytest.raises(StepFailed, match="not found"):
        TraceGet().run(TraceGetInputs(url=f"{receiver.url}/jaeger", trace_id="ab" * 16), ctx)
    with pytest.raises(StepFailed, match="did not answer"):
        TraceGet().run(TraceGetInputs(url=free_port_url("http"), trace_id=trace_id, timeout="2s"), ctx)


def test_trace_get_subtree_of_one_span(shop, tmp_path):
    receiver, trace_id = shop
    whole = TraceGet().run(TraceGetInputs(url=f"{receiver.url}/jaeger", trace_id=trace_id), make_ctx(tmp_path))
    server = next(s for s in whole["critical_path"] if s["name"] == "POST /orders")
    part = TraceGet().run(TraceGetInputs(url=f"{receiver.url}/tempo", trace_id=trace_id, span_id=server["span_id"]),
                          make_ctx(tmp_path))
    assert part["span_count"] == 3 and part["root"]["name"] == "POST /orders" and part["services"] == ["shop"]


@pytest.mark.parametrize("shape", ["jaeger", "tempo"])
def test_trace_search_by_service_operation_and_duration(shop, shape, tmp_path):
    receiver, trace_id = shop
    ctx = make_ctx(tmp_path)
    api = shape if shape == "jaeger" else "auto"  # auto finds no Jaeger there and asks Tempo's /api/search
    every = TraceSearch().run(TraceSearchInputs(url=f"{receiver.url}/{shape}", api=api, service="gateway"), ctx)
    assert every["count"] == 2 and every["slowest_trace_id"] == trace_id
    assert every["traces"][0]["root_name"] == "GET /checkout" and every["traces"][0]["duration_ms"] == 420
    slow = TraceSearch().run(TraceSearchInputs(url=f"{receiver.url}/{shape}", api=api, service="shop",
                                               operation="fetch_order_from_db", min_duration="100ms"), ctx)
    assert slow["trace_ids"] == [trace_id]
    none = TraceSearch().run(TraceSearchInputs(url=f"{receiver.url}/{shape}", api=api, service="gateway",
                                               min_duration="1s"), ctx)
    assert none["count"] == 0
    with pytest.raises(StepFailed, match="no trace matches"):
        TraceSearch().run(TraceSearchInputs(url=f"{receiver.url}/{shape}", api=api, service="nobody",
                                            fail_if_none=True), ctx)


# -- abuse -----------------------------------------------------------------------------------------
def test_a_huge_answer_is_cut_off_at_max_bytes(shop, tmp_path):
    receiver, _ = shop
    started = time.monotonic()
    with pytest.raises(StepFailed, match="more than max_bytes 1048576"):
        TraceGet().run(TraceGetInputs(url=f"{receiver.url}/huge", trace_id="ab" * 16, max_bytes=1024 * 1024),
                       make_ctx(tmp_path))
    assert time.monotonic() - started < 10  # stopped reading: 256 MiB were on offer
    with pytest.raises(StepFailed, match="more than max_bytes"):
        TraceSearch().run(TraceSearchInputs(url=f"{receiver.url}/huge", api="jaeger", service="x",
                                            max_bytes=1024 * 1024), make_ctx(tmp_path))


@pytest.mark.parametrize(("path", "problem"), [
    ("garbage", "not JSON"),
    ("wrongshape", "not a Jaeger or OTLP JSON trace"),
    ("deep", "not JSON"),
])
def test_malformed_answers_fail_the_step_cleanly(shop, tmp_path, path, problem):
    receiver, _ = shop
    with pytest.raises(StepFailed, match=problem):
        TraceGet().run(TraceGetInputs(url=f"{receiver.url}/{path}", trace_id="ab" * 16), make_ctx(tmp_path))


def test_cyclic_and_orphaned_spans_neither_hang_nor_recurse():
    ids = [f"{i:016x}" for i in range(1, 5001)]
    chain = [{"traceID": "ab" * 16, "spanID": sid, "operationName": f"s{i}", "startTime": 1000 + i,
              "duration": 100_000 - i, "processID": "p",
              "references": [{"refType": "CHILD_OF", "spanID": ids[i - 1]}] if i else []}
             for i, sid in enumerate(ids)]  # 5000 deep: no recursion limit in the way
    cycle = [{"traceID": "ab" * 16, "spanID": a, "operationName": "loop", "startTime": 1, "duration": 5,
              "processID": "p", "references": [{"refType": "CHILD_OF", "spanID": b}]}
             for a, b in (("f" * 16, "e" * 16), ("e" * 16, "f" * 16))]
    spans = traces.read_trace({"data": [{"spans": chain + cycle, "processes": {"p": {"serviceName": "svc"}}}]}, "auto")
    out = traces.analyse(spans, top=3)
    assert out["span_count"] == 5002 and out["root"]["name"] == "s0" and len(out["critical_path"]) == 5000


def test_inputs_are_validated_when_the_runbook_loads():
    text = """
id: t
title: t
steps:
  - id: get
    uses: trace.get
    with: {url: "ftp://jaeger", trace_id: "not-hex"}
  - id: search
    uses: trace.search
    with: {url: "http://tempo:3200", min_duration: 2s, max_duration: 1s}
  - id: limit
    uses: trace.search
    with: {url: "http://tempo:3200", limit: 0}
  - id: templated
    uses: trace.get
    with: {url: "http://jaeger:16686", trace_id: "{{ steps.get.outputs.trace_id }}"}
"""
    problems = {(e.path, e.message.split(":")[0]) for e in check_text(text, "t.yaml").errors}
    paths = {p for p, _ in problems}
    assert {"steps.0.with.url", "steps.0.with.trace_id", "steps.2.with.limit"} <= paths, problems
    assert any(p.startswith("steps.1.with") for p in paths), problems  # min longer than max
    assert not any(p.startswith("steps.3") for p in paths)  # a template is checked once rendered
    with pytest.raises(ValidationError):
        TraceGetInputs(url="http://x", trace_id="ab" * 16, max_bytes=10**12)
