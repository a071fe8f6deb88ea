from __future__ import annotations

from typing import Any

from server.runbooks.trace_kinds import TraceGetInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import traces


@register("trace.get")
class TraceGet(Step[TraceGetInputs]):
    """One trace from Jaeger's /api/traces/{id} or Tempo's (OTLP JSON), read into critical path, slowest spans
    (by self time, with their services) and spans in error."""

    def run(self, inputs: TraceGetInputs, ctx: StepContext) -> dict[str, Any]:
        trace_id = inputs.trace_id.lower().rjust(32, "0")
        base = inputs.url.rstrip("/")
        timeout = ctx.remaining(inputs.timeout.total_seconds()) or inputs.timeout.total_seconds()
        status, document = traces.get_json(f"{base}/api/traces/{trace_id}", params=None, headers=inputs.headers,
                                           timeout=timeout, max_bytes=inputs.max_bytes, what=f"trace API at {base}")
        if status == 404:
            raise StepFailed(f"trace {trace_id} not found at {base} (it may not have been exported yet)")
        if status != 200:
            raise StepFailed(f"trace API at {base} answered {status}")
        try:
            spans = traces.read_trace(document, inputs.api)
        except ValueError as exc:
            raise StepFailed(f"trace API at {base}: not a Jaeger or OTLP JSON trace: {exc}") from None
        if not spans:
            raise StepFailed(f"trace {trace_id} at {base} has no spans")
        if inputs.span_id:
            subtree = traces.subtree(spans, inputs.span_id.lower().rjust(16, "0"))
            if not subtree:
                raise StepFailed(f"trace {trace_id} has no span {inputs.span_id} (yet)")
            spans = subtree
        outputs = traces.analyse(spans, top=inputs.top)
        missing = [f"service {s}" for s in inputs.require_services if s and s not in outputs["services"]]
        missing += [f"span {n}" for n in inputs.require_spans if n and n not in outputs["span_names"]]
        if missing:
            raise StepFailed(f"trace {trace_id} has no {', no '.join(missing)} (yet)", outputs)
        outputs["trace_id"] = outputs["trace_id"] or trace_id
        bottleneck = outputs["bottleneck"] or {}
        ctx.emit(f"trace {trace_id}: {outputs['span_count']} spans over {', '.join(outputs['services'])} in "
                 f"{outputs['duration_ms']} ms; slowest {outputs['slowest_span']} ({outputs['slowest_service']}), "
                 f"bottleneck {bottleneck.get('name')}; {outputs['error_count']} in error")
        if inputs.fail_on_error_spans and outputs["error_count"]:
            first = outputs["errors"][0]
            raise StepFailed(f"{outputs['error_count']} span(s) in error, first {first['name']} "
                             f"({first['service']}): {first['error']}", outputs)
        return outputs
