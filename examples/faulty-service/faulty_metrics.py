"""faulty-service's Prometheus metrics: requests by route and status, and a latency histogram, at /metrics.

Kept apart from app.py (which adds it with one call) in a registry of its own, so nothing else registered in
the process shows up in the scrape. Route labels are the route templates (/api/orders/{order_id}), never raw
paths, so the series stay few.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry()
REQUESTS = Counter("faulty_http_requests", "HTTP requests served, by route, method and status",
                   ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("faulty_http_request_duration_seconds", "HTTP request latency, by route and method",
                    ["route", "method"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def add_metrics(app: FastAPI) -> None:
    """Count and time every request (errors turned into 500s by exception handlers included); serve /metrics."""

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            if route != "/metrics":
                REQUESTS.labels(route, request.method, str(status)).inc()
                LATENCY.labels(route, request.method).observe(time.perf_counter() - started)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
