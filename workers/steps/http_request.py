from __future__ import annotations

import json
import time
from typing import Any

import httpx

from server import tracing
from server.runbooks.kinds import HttpExpect, HttpRequestInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import netguard

BODY_LIMIT = 1024 * 1024  # read at most this much of a response; outputs over the cap become an artifact anyway
_MISSING = object()


def json_path(document: Any, path: str) -> Any:
    """Follow a dotted path (`data.items.0.name`, an optional leading `$.`) into parsed JSON."""
    current = document
    for part in path.removeprefix("$.").split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def check_expectations(expect: HttpExpect, outputs: dict[str, Any]) -> list[str]:
    problems = []
    if expect.status is not None:
        wanted = expect.status if isinstance(expect.status, list) else [expect.status]
        if outputs["status"] not in wanted:
            problems.append(f"status {outputs['status']}, expected {' or '.join(map(str, wanted))}")
    if expect.max_latency_ms is not None and outputs["latency_ms"] > expect.max_latency_ms:
        problems.append(f"latency {outputs['latency_ms']} ms is over {expect.max_latency_ms} ms")
    if expect.body_contains is not None and expect.body_contains not in outputs["body"]:
        problems.append(f"body does not contain {expect.body_contains!r}")
    for path, wanted_value in (expect.json_path_equals or {}).items():
        got = json_path(outputs["json"], path) if outputs["json"] is not None else _MISSING
        if got is _MISSING:
            problems.append(f"JSON path {path} is missing")
        elif got != wanted_value:
            problems.append(f"JSON path {path} is {got!r}, expected {wanted_value!r}")
    return problems


def send(method: str, url: str, *, timeout: float, headers: dict[str, str] | None = None, json_body: Any = None,
         body: str | None = None, follow_redirects: bool = False, verify: bool = True) -> dict[str, Any]:
    """One request; outputs status, latency_ms, headers, body (capped) and json (when the body parses)."""
    started = time.perf_counter()
    with httpx.Client(timeout=timeout, follow_redirects=follow_redirects, verify=verify,
                      transport=netguard.transport(verify=verify)) as client, \
            client.stream(method, url, headers=headers, json=json_body, content=body) as response:
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= BODY_LIMIT:
                break
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        raw = b"".join(chunks)[:BODY_LIMIT]
    try:
        parsed = json.loads(raw) if size < BODY_LIMIT and raw else None
    except ValueError:
        parsed = None
    return {"status": response.status_code, "latency_ms": latency_ms, "headers": dict(response.headers),
            "body": raw.decode(errors="replace"), "json": parsed}


@register("http.request")
class HttpRequest(Step[HttpRequestInputs]):
    def run(self, inputs: HttpRequestInputs, ctx: StepContext) -> dict[str, Any]:
        timeout = ctx.remaining(inputs.timeout.total_seconds()) or inputs.timeout.total_seconds()
        try:
            outputs = send(inputs.method, inputs.url, timeout=timeout, headers=inputs.headers,
                           json_body=inputs.json_body, body=inputs.body, follow_redirects=inputs.follow_redirects,
                           verify=inputs.verify_tls)
        except httpx.HTTPError as exc:
            raise StepFailed(f"{inputs.method} {inputs.url} failed: {type(exc).__name__}: {exc}") from None
        ids = tracing.log_ids()  # the trace the request joined and the span above it (its traceparent), when on
        outputs["trace_id"], outputs["span_id"] = ids if ids else (None, None)
        ctx.emit(f"{inputs.method} {inputs.url} -> {outputs['status']} in {outputs['latency_ms']} ms")
        if inputs.expect is not None:
            problems = check_expectations(inputs.expect, outputs)
            if problems:
                raise StepFailed(f"{inputs.method} {inputs.url}: " + "; ".join(problems), outputs)
        return outputs
