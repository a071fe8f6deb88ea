from __future__ import annotations

import time
from typing import Any

import orjson

from server.runbooks.trace_kinds import TraceSearchInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import traces


def _go_duration(seconds: float) -> str:
    return f"{round(seconds * 1_000_000)}us"


def _logfmt(pairs: dict[str, str]) -> str:
    return " ".join(f"{k}={orjson.dumps(v).decode() if (' ' in v or '=' in v or not v) else v}"
                    for k, v in pairs.items())


@register("trace.search")
class TraceSearch(Step[TraceSearchInputs]):
    """Jaeger's GET /api/traces?service=… or Tempo's GET /api/search?tags=…; api auto tries Jaeger's first."""

    def run(self, inputs: TraceSearchInputs, ctx: StepContext) -> dict[str, Any]:
        base = inputs.url.rstrip("/")
        timeout = ctx.remaining(inputs.timeout.total_seconds()) or inputs.timeout.total_seconds()
        end = time.time()
        start = end - inputs.since.total_seconds()
        hits: list[dict[str, Any]] | None = None
        if inputs.api in ("auto", "jaeger"):
            hits = self._jaeger(inputs, base, start, end, timeout)
            if hits is None and inputs.api == "jaeger":
                raise StepFailed(f"{base} did not answer like a Jaeger query API")
        if hits is None:
            hits = self._tempo(inputs, base, start, end, timeout)
        hits = [h for h in hits if self._in_bounds(inputs, h)]
        hits.sort(key=lambda h: h["duration_ms"] or 0, reverse=True)
        hits = hits[:inputs.limit]
        outputs = {"count": len(hits), "traces": hits, "trace_ids": [h["trace_id"] for h in hits],
                   "slowest_trace_id": hits[0]["trace_id"] if hits else None}
        ctx.emit(f"{len(hits)} trace(s) at {base}" + (f", slowest {hits[0]['trace_id']} "
                                                       f"({hits[0]['duration_ms']} ms)" if hits else ""))
        if inputs.fail_if_none and not hits:
            raise StepFailed("no trace matches", outputs)
        return outputs

    @staticmethod
    def _in_bounds(inputs: TraceSearchInputs, hit: dict[str, Any]) -> bool:
        duration = hit.get("duration_ms") or 0
        if inputs.min_duration is not None and duration < inputs.min_duration.total_seconds() * 1000:
            return False
        return not (inputs.max_duration is not None and duration > inputs.max_duration.total_seconds() * 1000)

    @staticmethod
    def _jaeger(inputs: TraceSearchInputs, base: str, start: float, end: float,
                timeout: float) -> list[dict[str, Any]] | None:
        if not inputs.service:
            if inputs.api == "jaeger":
                raise StepFailed("a Jaeger search needs a service")
            return None
        params: dict[str, Any] = {"service": inputs.service, "start": int(start * 1e6), "end": int(end * 1e6),
                                  "limit": inputs.limit}
        if inputs.operation:
            params["operation"] = inputs.operation
        if inputs.min_duration is not None:
            params["minDuration"] = _go_duration(inputs.min_duration.total_seconds())
        if inputs.max_duration is not None:
            params["maxDuration"] = _go_duration(inputs.max_duration.total_seconds())
        if inputs.tags:
            params["tags"] = orjson.dumps(inputs.tags).decode()
        status, document = traces.get_json(f"{base}/api/traces", params=params, headers=inputs.headers,
                                           timeout=timeout, max_bytes=inputs.max_bytes, what=f"Jaeger at {base}")
        if status != 200 or not isinstance(document, dict) or not isinstance(document.get("data"), list):
            return None
        hits = []
        for trace in document["data"]:
            try:
                spans = traces.spans_from_jaeger_trace(trace) if isinstance(trace, dict) else []
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StepFailed(f"Jaeger at {base}: a trace is malformed: {exc}") from None
            if spans:
                hits.append(traces.summarise(spans))
        return hits

    @staticmethod
    def _tempo(inputs: TraceSearchInputs, base: str, start: float, end: float, timeout: float) -> list[dict[str, Any]]:
        tags = {**({"service.name": inputs.service} if inputs.service else {}),
                **({"name": inputs.operation} if inputs.operation else {}), **inputs.tags}
        params: dict[str, Any] = {"start": int(start), "end": int(end) + 1, "limit": inputs.limit}
        if tags:
            params["tags"] = _logfmt(tags)
        if inputs.min_duration is not None:
            params["minDuration"] = _go_duration(inputs.min_duration.total_seconds())
        if inputs.max_duration is not None:
            params["maxDuration"] = _go_duration(inputs.max_duration.total_seconds())
        status, document = traces.get_json(f"{base}/api/search", params=params, headers=inputs.headers,
                                           timeout=timeout, max_bytes=inputs.max_bytes, what=f"Tempo at {base}")
        if status != 200 or not isinstance(document, dict) or not isinstance(document.get("traces"), list):
            raise StepFailed(f"{base} answered {status} to a Jaeger and a Tempo search alike"
                             if inputs.api == "auto" else f"Tempo at {base} answered {status} without `traces`")
        hits = []
        for item in document["traces"]:
            if not isinstance(item, dict):
                continue
            try:
                start_us = int(item.get("startTimeUnixNano") or 0) // 1000
                duration = float(item.get("durationMs") or 0)
            except (TypeError, ValueError):
                raise StepFailed(f"Tempo at {base}: a search hit is malformed: {item!r:.200}") from None
            hits.append({"trace_id": traces.hex_id(item.get("traceID"), 32), "root_service": item.get(
                "rootServiceName"), "root_name": item.get("rootTraceName"), "duration_ms": duration,
                "start_us": start_us, "span_count": None, "error_count": None})
        return hits
