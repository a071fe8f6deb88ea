from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from typing import Any

import httpx

from server.runbooks.toolkit_kinds import MetricsQueryInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import netguard

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                   "<=": operator.le, "==": operator.eq, "!=": operator.ne}
SERIES_LIMIT = 50
POINTS_LIMIT = 500


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def aggregate(values: list[float], how: str) -> float | None:
    if not values:
        return None
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "sum":
        return sum(values)
    if how == "avg":
        return sum(values) / len(values)
    return values[-1]


@register("metrics.query")
class MetricsQuery(Step[MetricsQueryInputs]):
    def run(self, inputs: MetricsQueryInputs, ctx: StepContext) -> dict[str, Any]:
        base = inputs.url.rstrip("/")
        now = time.time()
        if inputs.range is None:
            endpoint, params = "/api/v1/query", {"query": inputs.query, "time": f"{now:.3f}"}
        else:
            endpoint = "/api/v1/query_range"
            params = {"query": inputs.query, "start": f"{now - inputs.range.total_seconds():.3f}",
                      "end": f"{now:.3f}", "step": f"{inputs.step.total_seconds():g}"}
        timeout = ctx.remaining(inputs.timeout.total_seconds()) or inputs.timeout.total_seconds()
        try:
            with httpx.Client(transport=netguard.transport()) as client:
                response = client.post(base + endpoint, data=params, headers=inputs.headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise StepFailed(f"Prometheus at {base} did not answer: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise StepFailed(f"Prometheus answered {response.status_code} without JSON: {response.text[:200]}") \
                from None
        if response.status_code != 200 or body.get("status") != "success":
            raise StepFailed(f"query failed ({response.status_code}): {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        result_type = data["resultType"]
        series: list[dict[str, Any]] = []
        values: list[float] = []
        if result_type in ("scalar", "string"):
            number = _number(data["result"][1])
            series.append({"metric": {}, "value": number})
            values += [number] if number is not None else []
        elif result_type == "vector":
            for item in data["result"]:
                number = _number(item["value"][1])
                series.append({"metric": item["metric"], "value": number})
                values += [number] if number is not None else []
        else:  # matrix
            for item in data["result"]:
                points = [[t, _number(v)] for t, v in item["values"]]
                series.append({"metric": item["metric"], "values": points[-POINTS_LIMIT:]})
                # Over a range, `last` means each series' latest point, and max/min/avg/sum span every point.
                numbers = [p[1] for p in points if p[1] is not None]
                values += numbers[-1:] if inputs.aggregate == "last" else numbers
        value = aggregate(values, inputs.aggregate)
        verdict = None
        if inputs.threshold is not None:
            verdict = "no data" if value is None else (
                "breach" if OPS[inputs.op](value, inputs.threshold) else "ok")
        outputs = {"result_type": result_type, "series": series[:SERIES_LIMIT], "series_count": len(series),
                   "value": value, "verdict": verdict, "query": inputs.query}
        ctx.emit(f"{inputs.query} -> {inputs.aggregate} {value}" +
                 (f" ({verdict}: {inputs.op} {inputs.threshold:g})" if verdict else ""))
        if verdict == "breach" and inputs.fail_on_breach:
            raise StepFailed(f"{inputs.query}: {value} {inputs.op} {inputs.threshold:g}", outputs)
        return outputs
