"""One error shape for every failure, body limits, probes and metrics."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings
from tests.support import free_port_url, http, serve


def _assert_error_shape(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


def test_validation_error_names_each_field(base_url, admin_token):
    with http(base_url, admin_token) as client:
        response = client.post("/api/v1/tokens", json={"name": "", "role": "king", "surprise": 1})
    error = _assert_error_shape(response, 422, "validation_error")
    fields = {d["field"] for d in error["details"]}
    assert {"name", "role"} <= fields
    assert "role" in error["message"]


def test_malformed_json_is_422_not_500(base_url, admin_token):
    with http(base_url, admin_token) as client:
        response = client.post("/api/v1/tokens", content=b"{not json", headers={"Content-Type": "application/json"})
    _assert_error_shape(response, 422, "validation_error")


def test_unknown_route_is_404_in_the_same_shape(base_url):
    with http(base_url) as client:
        _assert_error_shape(client.get("/api/v1/nothing-here"), 404, "not_found")


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413(base_url, admin_token, settings, chunked):
    body = b"x" * (settings.max_body_bytes + 1)
    with http(base_url, admin_token) as client:
        if chunked:  # no Content-Length: the limit must hold while streaming too
            response = client.post("/api/v1/tokens", content=iter([body[:1000], body[1000:]]),
                                   headers={"Content-Type": "application/json"})
        else:
            response = client.post("/api/v1/tokens", content=body, headers={"Content-Type": "application/json"})
    error = _assert_error_shape(response, 413, "payload_too_large")
    assert "RUNBOOKD_MAX_BODY_BYTES" in error["message"]


def test_unhandled_error_is_500_without_a_stack_trace(settings):
    app: FastAPI = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    with serve(app) as url, http(url) as client:
        response = client.get("/boom")
    error = _assert_error_shape(response, 500, "internal_error")
    assert "Traceback" not in response.text and "secret internals" not in response.text
    assert error["request_id"]


def test_request_id_is_accepted_or_made_and_echoed(base_url):
    with http(base_url) as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert made != "bad id\twith spaces" and len(made) == 32


def test_healthz_and_readyz(base_url):
    with http(base_url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_what_is_unreachable(settings: Settings):
    broken = settings.model_copy(update={"redis_url": free_port_url("redis")})
    with serve(create_app(broken)) as url, http(url) as client:
        response = client.get("/readyz")
    error = _assert_error_shape(response, 503, "not_ready")
    assert response.status_code == 503
    assert error["message"].startswith("not ready: redis: ConnectionError")
    assert error["details"]["database"] == "ok"
    assert "ConnectionError" in error["details"]["redis"]


def test_metrics_are_prometheus_text(base_url):
    with http(base_url) as client:
        client.get("/healthz")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert 'runbookd_http_requests_total{method="GET",route="/healthz",status="200"}' in response.text
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in response.text.splitlines()
               if line.startswith("runbookd_http_request_duration_seconds_") and 'route="/healthz"' in line
               and "_bucket" not in line}
    mean = samples['runbookd_http_request_duration_seconds_sum{method="GET",route="/healthz"}'] / \
        samples['runbookd_http_request_duration_seconds_count{method="GET",route="/healthz"}']
    assert 0 < mean < 1.0, f"a /healthz request took {mean:.3f} s on average: the latency is measured wrongly"


def test_readyz_is_503_until_the_database_is_migrated(settings: Settings, tmp_path):
    unmigrated = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    with serve(create_app(unmigrated)) as url, http(url) as client:
        response = client.get("/readyz")
    error = _assert_error_shape(response, 503, "not_ready")
    assert "runbookd migrate" in error["details"]["database"]
    assert error["details"]["redis"] == "ok"


def test_an_unreachable_database_is_503_with_retry_after_not_a_500(settings: Settings):
    from server.stack import free_port

    down = settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"})
    app: FastAPI = create_app(down)

    @app.get("/duplicate")
    def duplicate() -> None:  # a real database error, not an outage: still the 500 it is
        from sqlalchemy.exc import IntegrityError

        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with serve(app) as url, http(url, "rbd_" + "x" * 40) as client:
        response = client.get("/api/v1/runs")
        duplicate_response = client.get("/duplicate")
    error = _assert_error_shape(response, 503, "unavailable")
    assert response.headers["retry-after"].isdigit()
    assert error["details"] == {"service": "database"}
    assert "Traceback" not in response.text and "127.0.0.1" not in response.text
    _assert_error_shape(duplicate_response, 500, "internal_error")
