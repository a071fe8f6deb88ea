"""Traces as evidence (trace.get, trace.search): bounded reads from Jaeger or Tempo, both JSON shapes read into
one span list, and what a trace says: its critical path, its slowest spans (by self time) and spans in error.

Hand-written, since no library on PyPI reads Jaeger's query JSON or analyses a trace's critical path; the
critical path follows the algorithm Jaeger's UI uses (from the root's end backwards, each time into the child
that finished last before the cursor), done iteratively so a deep or cyclic trace cannot exhaust the stack.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from workers.steps.base import StepFailed

MAX_SPANS = 100_000  # spans analysed per trace; the rest are counted, not read
ERROR_SPANS_KEPT = 20
OTLP_ERROR = (2, "STATUS_CODE_ERROR", "ERROR")


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_us: int
    end_us: int
    error: str | None = None  # the status message (or "error") when the span is in error
    children: list[Span] = field(default_factory=list)

    @property
    def duration_us(self) -> int:
        return max(0, self.end_us - self.start_us)


# -- reading ----------------------------------------------------------------------------------------
def get_json(url: str, *, params: dict[str, Any] | None, headers: dict[str, str], timeout: float,
             max_bytes: int, what: str) -> tuple[int, Any]:
    """GET and parse JSON, reading at most max_bytes (decompressed): a larger answer fails the step."""
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client, \
                client.stream("GET", url, params=params, headers={"Accept": "application/json", **headers}) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes and "content-encoding" not in resp.headers:
                raise StepFailed(f"{what} answered {int(declared)} bytes, over max_bytes {max_bytes}")
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise StepFailed(f"{what} answered more than max_bytes {max_bytes} bytes; stopped reading")
                chunks.append(chunk)
            status = resp.status_code
    except httpx.HTTPError as exc:
        raise StepFailed(f"{what} did not answer: {type(exc).__name__}: {exc}") from None
    raw = b"".join(chunks)
    try:
        return status, orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        if status != 200:
            return status, None
        raise StepFailed(f"{what} answered {status} with something that is not JSON ({exc}): "
                         f"{raw[:120].decode(errors='replace')!r}") from None


def hex_id(value: Any, width: int) -> str:
    """An id as lowercase hex: OTLP/JSON writes hex, protobuf's JSON mapping (Tempo) base64."""
    if not isinstance(value, str) or not value:
        return ""
    text = value.strip()
    if len(text) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower().rjust(width, "0")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.lower()
    return decoded.hex().rjust(width, "0") if decoded else ""


def _attr_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if key in value:
            return value[key]
    return None


def _otlp_attrs(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {i["key"]: _attr_value(i.get("value")) for i in items if isinstance(i, dict) and "key" in i}


def spans_from_otlp(document: dict[str, Any]) -> list[Span]:
    """OTLP JSON (Tempo's /api/traces/{id}: `batches`, v2's `trace`, or plain `resourceSpans`)."""
    if isinstance(document.get("trace"), dict):
        document = document["trace"]
    batches = document.get("resourceSpans", document.get("batches"))
    if not isinstance(batches, list):
        raise ValueError("no resourceSpans or batches")
    spans: list[Span] = []
    for batch in batches:
        service = str(_otlp_attrs((batch.get("resource") or {}).get("attributes")).get("service.name") or "unknown")
        for scope in batch.get("scopeSpans") or batch.get("instrumentationLibrarySpans") or []:
            for raw in scope.get("spans") or []:
                if len(spans) >= MAX_SPANS:
                    return spans
                status = raw.get("status") or {}
                error = (status.get("message") or "error") if status.get("code") in OTLP_ERROR else None
                parent = hex_id(raw.get("parentSpanId"), 16)
                spans.append(Span(trace_id=hex_id(raw.get("traceId"), 32), span_id=hex_id(raw["spanId"], 16),
                                  parent_id=parent or None, name=str(raw.get("name", "")), service=service,
                                  start_us=int(raw["startTimeUnixNano"]) // 1000,
                                  end_us=int(raw["endTimeUnixNano"]) // 1000, error=error))
    return spans


def _jaeger_error(tags: Any) -> str | None:
    values = {t.get("key"): t.get("value") for t in tags or [] if isinstance(t, dict)}
    if values.get("error") in (True, "true") or values.get("otel.status_code") == "ERROR":
        return str(values.get("otel.status_description") or "error")
    return None


def spans_from_jaeger_trace(trace: dict[str, Any]) -> list[Span]:
    processes = trace.get("processes") or {}
    spans: list[Span] = []
    for raw in trace.get("spans") or []:
        if len(spans) >= MAX_SPANS:
            break
        parent = next((r.get("spanID") for r in raw.get("references") or []
                       if isinstance(r, dict) and r.get("refType", "CHILD_OF") == "CHILD_OF"), None)
        process = processes.get(raw.get("processID")) or raw.get("process") or {}
        start = int(raw["startTime"])
        spans.append(Span(trace_id=hex_id(raw.get("traceID"), 32), span_id=hex_id(raw["spanID"], 16),
                          parent_id=hex_id(parent, 16) or None, name=str(raw.get("operationName", "")),
                          service=str(process.get("serviceName") or "unknown"), start_us=start,
                          end_us=start + int(raw.get("duration") or 0), error=_jaeger_error(raw.get("tags"))))
    return spans


def read_trace(document: Any, api: str) -> list[Span]:
    """Spans of one trace from either shape; ValueError naming what is wrong with it."""
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    try:
        if api == "jaeger" or (api == "auto" and "data" in document):
            data = document.get("data")
            if not isinstance(data, list):
                raise ValueError("no `data` list (Jaeger)")
            spans = [s for trace in data if isinstance(trace, dict) for s in spans_from_jaeger_trace(trace)]
        else:
            spans = spans_from_otlp(document)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"a span lacks {exc}") from None
    return spans


# -- analysing --------------------------------------------------------------------------------------
def _tree(spans: list[Span]) -> list[Span]:
    """Link children to parents; the roots (parent missing from the trace) by start time."""
    by_id: dict[str, Span] = {}
    for span in spans:
        by_id.setdefault(span.span_id, span)
    roots = []
    for span in by_id.values():
        parent = by_id.get(span.parent_id or "")
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    return sorted(roots, key=lambda s: (s.start_us, -s.end_us))


def subtree(spans: list[Span], span_id: str) -> list[Span]:
    """The span and its descendants (a fresh tree: analyse() links them again)."""
    children: dict[str, list[Span]] = {}
    for span in spans:
        children.setdefault(span.parent_id or "", []).append(span)
    top = next((s for s in spans if s.span_id == span_id), None)
    if top is None:
        return []
    out, stack, seen = [], [top], set()
    while stack:
        span = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        out.append(span)
        stack.extend(children.get(span.span_id, []))
    for span in out:
        span.children = []
    return out


def self_time_us(span: Span) -> int:
    """The span's duration less the time covered by its children (clipped to it)."""
    intervals = sorted((max(c.start_us, span.start_us), min(c.end_us, span.end_us)) for c in span.children)
    covered, cursor = 0, span.start_us
    for start, end in intervals:
        start = max(start, cursor)
        if end > start:
            covered += end - start
            cursor = end
    return max(0, span.duration_us - covered)


def critical_path(root: Span) -> list[tuple[Span, int]]:
    """Spans on the critical path in time order, each with the microseconds it contributes to it."""
    segments: list[tuple[int, Span, int]] = []  # (start, span, length)
    stack, seen = [(root, root.end_us)], set()
    while stack:
        span, until = stack.pop()
        if id(span) in seen:
            continue
        seen.add(id(span))
        cursor = min(span.end_us, until)
        for child in sorted(span.children, key=lambda c: c.end_us, reverse=True):
            if child.start_us >= cursor or id(child) in seen:
                continue
            child_end = min(child.end_us, cursor)
            if cursor > child_end:
                segments.append((child_end, span, cursor - child_end))
            stack.append((child, child_end))
            cursor = max(child.start_us, span.start_us)
        if cursor > span.start_us:
            segments.append((span.start_us, span, cursor - span.start_us))
    totals: dict[int, int] = {}
    first: dict[int, tuple[int, Span]] = {}
    for start, span, length in segments:
        totals[id(span)] = totals.get(id(span), 0) + length
        first.setdefault(id(span), (start, span))
        first[id(span)] = min(first[id(span)], (start, span), key=lambda item: item[0])
    return [(span, totals[id(span)]) for _start, span in sorted(first.values(), key=lambda item: item[0])]


def _ms(us: int) -> float:
    return round(us / 1000, 3)


def _public(span: Span, **extra: Any) -> dict[str, Any]:
    return {"name": span.name, "service": span.service, "span_id": span.span_id,
            "duration_ms": _ms(span.duration_us), **extra}


def analyse(spans: list[Span], *, top: int) -> dict[str, Any]:
    roots = _tree(spans)
    root = max(roots, key=lambda s: s.duration_us) if roots else None
    path = critical_path(root) if root is not None else []
    slowest = sorted(spans, key=self_time_us, reverse=True)[:top]
    errors = [s for s in spans if s.error]
    start = min((s.start_us for s in spans), default=0)
    end = max((s.end_us for s in spans), default=0)
    bottleneck = max(path, key=lambda item: item[1]) if path else None
    return {
        "trace_id": spans[0].trace_id if spans else None,
        "span_count": len(spans),
        "services": sorted({s.service for s in spans}),
        "duration_ms": _ms(end - start),
        "root": _public(root) if root is not None else None,
        "roots": len(roots),
        "critical_path": [_public(s, on_path_ms=_ms(us)) for s, us in path],
        "bottleneck": _public(bottleneck[0], on_path_ms=_ms(bottleneck[1])) if bottleneck else None,
        "slowest": [_public(s, self_ms=_ms(self_time_us(s))) for s in slowest],
        "slowest_span": slowest[0].name if slowest else None,
        "slowest_service": slowest[0].service if slowest else None,
        "errors": [_public(s, error=s.error) for s in errors[:ERROR_SPANS_KEPT]],
        "error_count": len(errors),
        "span_names": sorted({s.name for s in spans}),
    }


def summarise(spans: list[Span]) -> dict[str, Any]:
    """One search hit: its root, duration and size."""
    roots = _tree(spans)
    root = min(roots, key=lambda s: s.start_us) if roots else None
    start = min((s.start_us for s in spans), default=0)
    end = max((s.end_us for s in spans), default=0)
    return {"trace_id": spans[0].trace_id if spans else None, "root_service": root.service if root else None,
            "root_name": root.name if root else None, "duration_ms": _ms(end - start), "start_us": start,
            "span_count": len(spans), "error_count": sum(1 for s in spans if s.error)}
