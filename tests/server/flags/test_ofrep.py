"""OFREP over raw HTTP: response and error shapes, environments, auth, bulk ETag/304, the SSE change stream."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from server.auth.models import Role
from tests.server.flags.conftest import new_key
from tests.server.loglevels.processes import api_process  # module-level: conftest's auto marks follow it
from tests.support import http, wait_for


@pytest.fixture
def ofrep(base_url, client_token):
    with http(base_url, client_token) as client:
        yield client


def test_single_evaluation_shape_and_reasons(make_flag, ofrep, api):
    key = make_flag(type="string", variants={"a": "alpha", "b": "beta"}, default_variant="a", off_variant="a",
                    environments={
        "production": {"enabled": True, "rules": [
            {"conditions": [{"attribute": "email", "operator": "ends_with", "value": "@corp.com"}], "variant": "b"}]},
    })["key"]
    hit = ofrep.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"targetingKey": "u1", "email": "a@corp.com"}})
    assert hit.status_code == 200
    assert hit.json() == {"key": key, "value": "beta", "reason": "TARGETING_MATCH", "variant": "b",
                          "metadata": {"version": 1, "flagType": "string"}}
    miss = ofrep.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"email": "a@else.com"}}).json()
    assert (miss["value"], miss["reason"]) == ("alpha", "DEFAULT")
    staging = ofrep.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"environment": "staging"}}).json()
    assert staging["reason"] == "DISABLED" and staging["value"] == "alpha"
    api.patch(f"/api/v1/flags/{key}", json={"environments": {"staging": {"enabled": True}}})
    static = ofrep.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"environment": "staging"}}).json()
    assert static["reason"] == "STATIC"


def test_error_codes(make_flag, ofrep):
    split_key = make_flag(environments={"production": {"enabled": True, "rules": [
        {"conditions": [], "split": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 50}]}]}})["key"]
    cases = [
        (f"/ofrep/v1/evaluate/flags/{split_key}", b"{not json", 400, "PARSE_ERROR"),
        (f"/ofrep/v1/evaluate/flags/{split_key}", b"[1, 2]", 400, "PARSE_ERROR"),
        (f"/ofrep/v1/evaluate/flags/{split_key}", b'{"context": "x"}', 400, "INVALID_CONTEXT"),
        (f"/ofrep/v1/evaluate/flags/{split_key}", b'{"context": {"targetingKey": 7}}', 400, "INVALID_CONTEXT"),
        (f"/ofrep/v1/evaluate/flags/{split_key}", b'{"context": {"environment": "mars"}}', 400, "INVALID_CONTEXT"),
        (f"/ofrep/v1/evaluate/flags/{split_key}", b'{"context": {}}', 400, "TARGETING_KEY_MISSING"),
        ("/ofrep/v1/evaluate/flags/no-such-flag", b'{"context": {}}', 404, "FLAG_NOT_FOUND"),
    ]
    for path, body, status, code in cases:
        response = ofrep.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, (body, response.text)
        assert response.json()["errorCode"] == code and response.json()["errorDetails"], body
        assert response.json()["key"] == path.rsplit("/", 1)[1]
    bulk = ofrep.post("/ofrep/v1/evaluate/flags", content=b"nope")
    assert bulk.status_code == 400 and bulk.json()["errorCode"] == "PARSE_ERROR"


def test_credentials(base_url, make_token, make_flag, admin_token):
    key = make_flag()["key"]
    path = f"/ofrep/v1/evaluate/flags/{key}"
    with httpx.Client(base_url=base_url) as anonymous:
        assert anonymous.post(path, json={"context": {}}).status_code == 401
        assert anonymous.post(path, json={}, headers={"Authorization": "Bearer rbd_wrong"}).status_code == 401
        assert anonymous.post(path, json={}, headers={"X-API-Key": make_token(Role.client)}).status_code == 200
    # A token named NAME@ENV is bound to that environment.
    scoped = make_token(Role.client, name=f"web-{new_key()}@staging")
    with http(base_url, scoped) as client:
        assert client.post(path, json={"context": {}}).json()["reason"] == "DISABLED"
        forbidden = client.post(path, json={"context": {"environment": "production"}})
        assert forbidden.status_code == 403
    with http(base_url, admin_token) as client:
        client.patch(f"/api/v1/flags/{key}", json={"environments": {"staging": {"enabled": True}}})
    with http(base_url, scoped) as client:
        assert client.post(path, json={"context": {}}).json()["reason"] == "STATIC"


def test_bulk_etag_304_and_event_stream_advertised(make_flag, ofrep, api, base_url, make_token):
    key = make_flag(enabled=True, default_variant="on")["key"]
    context = {"context": {"targetingKey": "user-1", "plan": "pro"}}
    first = ofrep.post("/ofrep/v1/evaluate/flags", json=context)
    assert first.status_code == 200
    body = first.json()
    mine = next(f for f in body["flags"] if f["key"] == key)
    assert mine["value"] is True and mine["reason"] == "STATIC"
    assert body["eventStreams"][0]["type"] == "sse" and body["eventStreams"][0]["url"].endswith("/ofrep/v1/events")
    etag = first.headers["etag"]
    again = ofrep.post("/ofrep/v1/evaluate/flags", json=context, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""
    # Another context, another credential, or a changed flag: a new ETag.
    other = ofrep.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "user-2"}},
                       headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    with http(base_url, make_token(Role.client)) as stranger:
        assert stranger.post("/ofrep/v1/evaluate/flags", json=context,
                             headers={"If-None-Match": etag}).status_code == 200
    api.patch(f"/api/v1/flags/{key}", json={"description": "changed"})
    changed = ofrep.post("/ofrep/v1/evaluate/flags", json=context, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_sse_stream_announces_changes(base_url, client_token, make_flag, api):
    key = make_flag()["key"]
    lines: list[str] = []
    connected = threading.Event()
    stop = threading.Event()

    def follow() -> None:
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=20)) as client, client.stream(
                "GET", "/ofrep/v1/events", headers={"Authorization": f"Bearer {client_token}"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith(": connected") or line.startswith("retry:"):
                    connected.set()
                lines.append(line)
                if stop.is_set() or (line.startswith("data:") and key in line):
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert connected.wait(10)
    started = time.monotonic()
    api.patch(f"/api/v1/flags/{key}", json={"description": "push me"})
    wait_for(lambda: any(key in line for line in lines), 5, "the change notice on the SSE stream")
    assert time.monotonic() - started < 2
    stop.set()
    reader.join(10)
    data = next(line for line in lines if key in line)
    assert '"type":"refetchEvaluation"' in data and '"version":2' in data
    with http(base_url, client_token) as client:
        config = client.get("/ofrep/v1/configuration").json()
    assert config["name"] == "runbookd" and "boolean" in config["capabilities"]["flagEvaluation"]["supportedTypes"]
    assert any(line.startswith("id: ") for line in lines)


def test_the_fast_path_keeps_request_ids_body_limit_and_metrics(base_url, client_token, make_flag, settings):
    key = make_flag()["key"]
    with http(base_url, client_token) as client:
        echoed = client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}, headers={"X-Request-ID": "req-flag-1"})
        assert echoed.headers["x-request-id"] == "req-flag-1"
        refused = client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}, headers={"Authorization": "Bearer nope",
                                                                                  "X-Request-ID": "req-flag-2"})
        assert refused.status_code == 401 and refused.json()["error"]["request_id"] == "req-flag-2"
        assert refused.headers["www-authenticate"] == "Bearer"
        huge = client.post(f"/ofrep/v1/evaluate/flags/{key}",
                           content=b'{"context": {"x": "' + b"a" * settings.max_body_bytes + b'"}}')
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
        metrics = client.get("/metrics").text
    assert 'route="/ofrep/v1/evaluate/flags/{key}",status="200"' in metrics.replace("method=\"POST\",", "")


def test_an_open_event_stream_does_not_hold_up_shutdown(settings, client_token, tmp_path):
    with api_process(settings, tmp_path / "api.log") as (url, proc):
        client = httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=30))
        with client.stream("GET", "/ofrep/v1/events", headers={"Authorization": f"Bearer {client_token}"}) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())
            started = time.monotonic()
            proc.terminate()
            proc.wait(15)
        client.close()
    assert time.monotonic() - started < 10
