"""faulty-service: a small shop API whose faults runbookd's feature flags switch on, for the demo and the
end-to-end tests of the shipped runbooks.

    RUNBOOKD_URL=http://127.0.0.1:8000 RUNBOOKD_TOKEN=rbd_... python examples/faulty-service/app.py --port 8080

Faults, each a boolean flag read through the OpenFeature SDK's OFREP provider against runbookd (keys are
FAULTY_FLAG_PREFIX + name, default `faulty-`):
  slow    GET /api/orders/{id} takes ~0.8 s in fetch_order_from_db (a slow query, logged as a warning)
  errors  GET /api/orders/{id} fails with 500 for even ids (InventoryTimeout) and ids divisible by 7 (StaleCache)
  leak    a background thread keeps adding to _session_cache (RSS grows ~150 MiB/min, capped at 1 GiB)
  cpu     a background thread spins in score_recommendations
  crash   POST /api/checkout calls native compute_discount with NULL: SIGSEGV and a core in FAULTY_HOME

It writes JSON lines to FAULTY_LOG (timestamp, level, logger, message, request_id, fields), its pid to
FAULTY_PID_FILE, and runs runbookd's LogLevelAgent so `loglevel.raise` reaches its loggers (faulty.db logs
each query at DEBUG).

Traced (OpenTelemetry, OTLP/HTTP) when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, as
service.name FAULTY_SERVICE_NAME: a server span per request, continuing the caller's traceparent (a runbookd
http.request step), and a `fetch_order_from_db` span beneath it, which the `slow` fault makes ~0.8 s long.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import logging
import os
import resource
import subprocess
import threading
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faulty_metrics import add_metrics  # beside this file (the script's directory is on sys.path)
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from opentelemetry import trace

from server import tracing
from server.agent import LogLevelAgent

SERVICE = os.environ.get("FAULTY_SERVICE_NAME", "faulty-service")
PREFIX = os.environ.get("FAULTY_FLAG_PREFIX", "faulty-")
FAULTS = ("slow", "errors", "leak", "cpu", "crash")
HOME = Path(os.environ.get("FAULTY_HOME", ".")).absolute()
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
http_log = logging.getLogger("faulty.http")
db_log = logging.getLogger("faulty.db")
fault_log = logging.getLogger("faulty.faults")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "service": SERVICE, "request_id": request_id_var.get()}
        line.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        return orjson.dumps(line, default=str).decode()


def configure_logging(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access"  # we log each request ourselves


class Faults:
    """Which faults are on: asked of runbookd through OFREP, at most every `ttl` seconds per flag."""

    def __init__(self, base_url: str, token: str, ttl: float = 0.5) -> None:
        self.provider = OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {token}"},
                                      timeout=2)
        openfeature.set_provider(self.provider, domain=SERVICE)
        self.client = openfeature.get_client(SERVICE)
        self.ttl = ttl
        self._seen: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def on(self, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(name)
        if cached and now - cached[0] < self.ttl:
            return cached[1]
        value = bool(self.client.get_boolean_value(PREFIX + name, False))  # unreachable server: fault off
        with self._lock:
            if self._seen.get(name, (0, None))[1] != value:
                fault_log.warning("fault %s is now %s", name, "on" if value else "off",
                                  extra={"fault": name, "enabled": value})
            self._seen[name] = (now, value)
        return value


class InventoryTimeout(Exception):
    pass


class StaleCache(Exception):
    pass


_session_cache: list[bytearray] = []
LEAK_STEP = 256 * 1024
LEAK_CAP = 1024 * 1024 * 1024


def fetch_order_from_db(order_id: int, faults: Faults) -> dict[str, Any]:
    # A no-op span unless tracing is on (see instrument()).
    with trace.get_tracer("faulty-service").start_as_current_span("fetch_order_from_db",
                                                                  attributes={"order.id": order_id}):
        return _fetch_order_from_db(order_id, faults)


def _fetch_order_from_db(order_id: int, faults: Faults) -> dict[str, Any]:
    started = time.perf_counter()
    if faults.on("slow"):
        time.sleep(0.8)  # the regression: a query that lost its index
    took = round((time.perf_counter() - started) * 1000, 1)
    db_log.debug("query orders.by_id", extra={"query": "orders.by_id", "order_id": order_id, "duration_ms": took})
    if took > 200:
        db_log.warning("slow query", extra={"query": "orders.by_id", "duration_ms": took})
    if faults.on("errors"):
        if order_id % 2 == 0:
            raise InventoryTimeout(f"inventory service did not answer for order {order_id}")
        if order_id % 7 == 0:
            raise StaleCache(f"cached order {order_id} is stale")
    return {"id": order_id, "total_cents": 1000 + order_id, "status": "paid"}


def score_recommendations(rounds: int) -> int:
    """The CPU hot spot: scores every product against every other, all in pure Python."""
    score = 0
    for i in range(rounds):
        for j in range(200):
            score = (score + i * j) % 1_000_003
    return score


def _background(faults: Faults, stop: threading.Event) -> None:
    while not stop.is_set():
        cpu, leak = faults.on("cpu"), faults.on("leak")
        db_log.debug("refreshing the session cache", extra={"entries": len(_session_cache)})
        until = time.monotonic() + 0.5
        while time.monotonic() < until and not stop.is_set():
            if cpu:
                score_recommendations(500)
            elif leak and len(_session_cache) * LEAK_STEP < LEAK_CAP:
                block = bytearray(LEAK_STEP)
                block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
                _session_cache.append(block)
                stop.wait(0.1)
            else:
                stop.wait(0.1)


def load_pricing() -> Any:
    """Build native/pricing.c once (gcc); without a compiler the crash fault reads address 0 instead."""
    source = Path(__file__).resolve().parent / "native" / "pricing.c"
    library = HOME / "libpricing.so"
    if not library.exists() or library.stat().st_mtime < source.stat().st_mtime:
        try:
            subprocess.run(["gcc", "-g", "-O0", "-shared", "-fPIC", "-o", str(library), str(source)], check=True,
                           capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    pricing = ctypes.CDLL(str(library))
    pricing.compute_discount.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return pricing


def create_app(faults: Faults, pricing: Any) -> FastAPI:
    app = FastAPI(title="faulty-service")
    add_metrics(app)  # /metrics for Prometheus (faulty_metrics.py)

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)  # copied into the endpoint's task and thread, so every line carries it
        started = time.perf_counter()
        try:
            response = await call_next(request)
            latency = round((time.perf_counter() - started) * 1000, 1)
            http_log.info("%s %s -> %s", request.method, request.url.path, response.status_code,
                          extra={"method": request.method, "path": request.url.path,
                                 "status": response.status_code, "latency_ms": latency})
        finally:
            request_id_var.reset(token)
        response.headers["x-request-id"] = rid
        return response

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        http_log.error("request failed: %s", exc, extra={"error": type(exc).__name__, "path": request.url.path})
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=500)

    for error in (InventoryTimeout, StaleCache):
        app.add_exception_handler(error, failed)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/api/orders/{order_id}")
    def order(order_id: int) -> dict[str, Any]:
        return fetch_order_from_db(order_id, faults)

    @app.post("/api/checkout")
    def checkout(body: dict[str, Any]) -> dict[str, Any]:
        coupon = body.get("coupon")
        cents = int(body.get("cents", 1000))
        if faults.on("crash"):
            fault_log.critical("checking out with the native pricing module", extra={"coupon": coupon})
            coupon = None  # the bug: a missing coupon is passed on as NULL
        elif coupon is None:
            coupon = ""
        if pricing is None:
            return {"discount": ctypes.string_at(0) if coupon is None else 0}
        return {"discount": pricing.compute_discount(None if coupon is None else coupon.encode(), cents)}

    return app


def instrument(app: FastAPI) -> FastAPI:
    """Server spans per request when the OTEL_* variables ask for export (server/tracing.py decides)."""
    if tracing.setup("service", service_name=SERVICE, instrument=False):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics", exclude_spans=["receive", "send"])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    HOME.mkdir(parents=True, exist_ok=True)
    os.chdir(HOME)  # a `core` core_pattern writes the crash's core here
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    log_path = Path(os.environ.get("FAULTY_LOG", HOME / "faulty-service.jsonl"))
    configure_logging(log_path)
    crash_log = (HOME / "faulty-service.crash.txt").open("a")
    faulthandler.enable(crash_log)  # the Python stack of a crash, next to the core
    Path(os.environ.get("FAULTY_PID_FILE", HOME / "faulty-service.pid")).write_text(f"{os.getpid()}\n")
    base_url = os.environ.get("RUNBOOKD_URL", "http://127.0.0.1:8000")
    token = os.environ.get("RUNBOOKD_TOKEN", "")
    faults = Faults(base_url, token)
    agent = LogLevelAgent(base_url, SERVICE, token, poll_interval=1.0)
    agent.start()
    stop = threading.Event()
    threading.Thread(target=_background, args=(faults, stop), name="background-jobs", daemon=True).start()
    logging.getLogger("faulty").info("faulty-service listening", extra={"port": args.port, "pid": os.getpid()})
    try:
        uvicorn.run(instrument(create_app(faults, load_pricing())), host=args.host, port=args.port, log_config=None,
                    access_log=False)
    finally:
        stop.set()
        agent.stop()
        tracing.shutdown()


if __name__ == "__main__":
    main()
