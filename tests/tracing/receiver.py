"""A loopback OTLP/HTTP trace receiver decoding the real protobuf (opentelemetry-proto), which serves what it
received back the way a Jaeger query API (/jaeger/api/traces...) and Tempo (/tempo/api/traces/{id},
/tempo/api/search) answer, so trace.get and trace.search read real traces in both shapes.
No collector, Jaeger or Tempo exists on these machines; this is their contract, not a mock of runbookd."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

HUGE_BYTES = 256 * 1024 * 1024  # what /huge would send if anyone read it all


@dataclass
class Received:
    resource: Resource
    scope: InstrumentationScope
    span: Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    def resource_attr(self, key: str) -> Any:
        return next((_value(a.value) for a in self.resource.attributes if a.key == key), None)

    def attr(self, key: str) -> Any:
        return next((_value(a.value) for a in self.span.attributes if a.key == key), None)

    @property
    def service(self) -> str:
        return str(self.resource_attr("service.name"))


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.url = ""

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            self.requests += 1
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(Received(rs.resource, ss.scope, span))

    def trace(self, trace_id: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def traces(self) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = defaultdict(list)
        with self.lock:
            for span in self.spans:
                grouped[span.trace_id].append(span)
        return grouped

    # -- the two query APIs' shapes -------------------------------------------------------------------
    @staticmethod
    def jaeger_trace(spans: list[Received]) -> dict[str, Any]:
        processes: dict[str, dict[str, Any]] = {}
        out = []
        for item in spans:
            pid = f"p{len(processes) + 1}"
            for key, process in processes.items():
                if process["serviceName"] == item.service:
                    pid = key
            processes[pid] = {"serviceName": item.service, "tags": []}
            tags = [{"key": a.key, "type": "string", "value": _value(a.value)} for a in item.span.attributes]
            if item.span.status.code == Status.STATUS_CODE_ERROR:
                tags += [{"key": "otel.status_code", "type": "string", "value": "ERROR"},
                         {"key": "error", "type": "bool", "value": True}]
            out.append({"traceID": item.trace_id, "spanID": item.span_id, "operationName": item.name,
                        "references": [{"refType": "CHILD_OF", "traceID": item.trace_id, "spanID": item.parent_id}]
                        if item.parent_id else [], "startTime": item.span.start_time_unix_nano // 1000,
                        "duration": (item.span.end_time_unix_nano - item.span.start_time_unix_nano) // 1000,
                        "tags": tags, "logs": [], "processID": pid, "warnings": None})
        return {"traceID": spans[0].trace_id if spans else "", "spans": out, "processes": processes,
                "warnings": None}

    @staticmethod
    def tempo_trace(spans: list[Received]) -> dict[str, Any]:
        """Tempo's /api/traces/{id} JSON: OTLP as protobuf's JSON mapping (ids in base64) under `batches`."""
        data = TracesData()
        for item in spans:
            data.resource_spans.append(ResourceSpans(resource=item.resource, scope_spans=[
                ScopeSpans(scope=item.scope, spans=[item.span])]))
        return {"batches": MessageToDict(data).get("resourceSpans", [])}

    def search(self, *, service: str | None, operation: str | None, min_us: int) -> list[list[Received]]:
        hits = []
        for spans in self.traces().values():
            start = min(s.span.start_time_unix_nano for s in spans) // 1000
            end = max(s.span.end_time_unix_nano for s in spans) // 1000
            if end - start < min_us:
                continue
            if service and not any(s.service == service and (not operation or s.name == operation) for s in spans):
                continue
            hits.append(spans)
        return hits


def _go_us(text: str | None) -> int:
    if not text:
        return 0
    for unit, factor in (("us", 1), ("ms", 1000), ("s", 1_000_000)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self._send(400, b"{}")
                return
            receiver.add(body)
            self._send(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            parts = url.path.strip("/").split("/")
            if parts[0] == "huge":  # streams far more than anyone should read
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b'{"data": [' + b" " * (1 << 20)
                try:
                    for _ in range(HUGE_BYTES >> 20):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    return
                self.wfile.write(b"0\r\n\r\n")
                return
            if parts[0] == "garbage":
                self._send(200, b'{"data": [{"traceID": "ab", "spans": [{"spanID": ')
                return
            if parts[0] == "wrongshape":
                self._send(200, json.dumps({"data": [{"spans": [{"spanID": "1", "startTime": "soon"}]}]}).encode())
                return
            if parts[0] == "deep":
                self._send(200, b"[" * 100_000 + b"]" * 100_000)
                return
            if parts[0] in ("jaeger", "tempo") and parts[1:3] == ["api", "traces"] and len(parts) == 4:
                spans = receiver.trace(parts[3])
                if not spans:
                    self._send(404, b'{"errors": [{"code": 404, "msg": "trace not found"}]}')
                    return
                shape = ({"data": [receiver.jaeger_trace(spans)], "total": 0, "limit": 0, "offset": 0, "errors": None}
                         if parts[0] == "jaeger" else receiver.tempo_trace(spans))
                self._send(200, json.dumps(shape).encode())
                return
            if parts[0] == "jaeger" and parts[1:] == ["api", "traces"]:
                hits = receiver.search(service=query.get("service"), operation=query.get("operation"),
                                       min_us=_go_us(query.get("minDuration")))
                self._send(200, json.dumps({"data": [receiver.jaeger_trace(h) for h in hits]}).encode())
                return
            if parts[0] == "tempo" and parts[1:] == ["api", "search"]:
                tags = dict(pair.split("=", 1) for pair in (query.get("tags") or "").split() if "=" in pair)
                hits = receiver.search(service=tags.get("service.name"), operation=tags.get("name"),
                                       min_us=_go_us(query.get("minDuration")))
                out = []
                for spans in hits:
                    root = min(spans, key=lambda s: s.span.start_time_unix_nano)
                    start = min(s.span.start_time_unix_nano for s in spans)
                    end = max(s.span.end_time_unix_nano for s in spans)
                    out.append({"traceID": root.trace_id, "rootServiceName": root.service,
                                "rootTraceName": root.name, "startTimeUnixNano": str(start),
                                "durationMs": (end - start) // 1_000_000})
                self._send(200, json.dumps({"traces": out}).encode())
                return
            self._send(404, b'{"error": "no such path"}')

    return Handler


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def wait_spans(receiver: Receiver, predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    names = sorted({f"{s.service}:{s.name}" for s in receiver.spans})
    raise TimeoutError(f"spans did not arrive within {timeout}s; received {names}")
