"""Issue 15, finding 6 (and the unknown-fields half of 7): bad input gets a 4xx in the error shape, never a 500."""

from __future__ import annotations

import time

import pytest
import redis

from server.auth.models import Role
from server.chat.security import verify_slack
from server.errors import DomainError
from server.settings import Settings
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http

TOO_BIG = str(2**63)  # one more than the largest BIGINT
DEEP = "title: t\nsteps: " + "[" * 3000 + "]" * 3000 + "\n"


@pytest.fixture(scope="module")
def admin(base_url, make_token):
    with http(base_url, make_token(Role.admin)) as client:
        yield client


def _error(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message", "details", "request_id"}, body
    return body["error"]


@pytest.mark.parametrize("duration", ["{}", "[]", "1e300", "Infinity", "-Infinity", "NaN", '"99999999999d"'])
def test_a_bad_for_is_a_422_on_log_levels_loggers_and_flags(admin, duration):
    raw = {"content-type": "application/json"}
    override = '{"service": "svc-bad-for", "logger": "app", "level": "DEBUG", "reason": "r", "for": ' + duration + "}"
    assert "for" in _error(admin.post("/api/v1/loglevels", content=override, headers=raw))["message"]
    actuator = '{"configuredLevel": "DEBUG", "for": ' + duration + "}"
    assert "for" in _error(admin.post("/debug/loggers/runbookd.badfor", content=actuator, headers=raw))["message"]
    key = new_key()
    assert admin.post("/api/v1/flags", json=flag_body(key)).status_code == 201
    change = '{"environments": {"production": {"enabled": true}}, "reason": "r", "for": ' + duration + "}"
    assert "for" in _error(admin.patch(f"/api/v1/flags/{key}", content=change, headers=raw))["message"]


@pytest.mark.parametrize("bad", [TOO_BIG, "99999999999999999999999", "²", "-1"])
def test_ids_cursors_and_event_ids_beyond_bigint_or_not_ascii_digits(admin, bad):
    for path in (f"/api/v1/runs/{bad}", f"/api/v1/runs/{bad}/events", f"/api/v1/loglevels/overrides/{bad}",
                 f"/api/v1/flags/{new_key()}/versions/{bad}"):
        assert admin.get(path).status_code in (404, 422), path
    for path in ("/api/v1/runs", "/api/v1/audit"):
        assert "cursor" in _error(admin.get(path, params={"cursor": bad}))["message"]
    assert admin.delete(f"/api/v1/tokens/{bad}").status_code == 404
    if bad != "-1":
        _error(admin.get(f"/api/v1/runs/{TOO_BIG}"))
        # latin-1: how a header carries it, so the server sees the character itself
        stream = admin.get("/api/v1/runs/1/events", headers={"Last-Event-ID": bad.encode("latin-1")})
        assert "Last-Event-ID" in _error(stream)["message"]


def test_the_slack_timestamp_must_be_ascii_digits(redis_url):
    settings = Settings(slack_signing_secret="s" * 32)
    client = redis.Redis.from_url(redis_url)
    try:
        for stamp in ("²", "١٢٣", TOO_BIG + "0" * 30):
            with pytest.raises(DomainError) as refused:
                verify_slack(settings, client, body=b"x", timestamp=stamp, signature="v0=00", remote="127.0.0.1",
                             now=time.time())
            assert refused.value.status_code == 401
    finally:
        client.close()


def test_yaml_nested_3000_deep_on_validate_and_upload(admin):
    checked = admin.post("/api/v1/runbooks/validate", json={"content": DEEP, "filename": "deep.yaml"})
    assert checked.status_code == 200 and "nested more than" in checked.text
    uploaded = admin.post("/api/v1/runbooks", json={"content": DEEP})
    assert 400 <= uploaded.status_code < 500 and "nested more than" in uploaded.text


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/loglevels", {"service": "svc-x", "logger": "app", "level": "INFO", "reason": "r",
                                   "expires_at": "2030-01-01T00:00:00Z"}),
    ("POST", "/debug/loggers/runbookd.x", {"configuredLevel": "INFO", "expires_at": "2030-01-01T00:00:00Z"}),
    ("POST", "/api/v1/runs", {"runbook": "kill-switch", "params": {}, "dryrun": True}),
    ("POST", "/api/v1/tokens", {"name": "t-extra", "role": "viewer", "expires_in": 3}),
    ("POST", "/api/v1/runbooks/validate", {"content": "x", "strict": True}),
])
def test_unknown_fields_are_errors_not_silently_ignored(admin, method, path, body):
    error = _error(admin.request(method, path, json=body))
    assert "extra" in error["message"].lower() or "not permitted" in error["message"].lower(), error


def test_every_request_body_in_the_openapi_document_forbids_unknown_fields(admin):
    document = admin.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    open_bodies = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media["schema"]
                refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
                for ref in filter(None, refs):
                    if schemas[ref.rsplit("/", 1)[1]].get("additionalProperties") is not False:
                        open_bodies.append(f"{method.upper()} {path}: {ref}")
    assert not open_bodies


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(("path", "wrap"), [
    ("/api/v1/runs", lambda deep: '{"runbook": "kill-switch", "params": {"flag": ' + deep + "}}"),
    ("/api/v1/flags", lambda deep: '{"key": "deep", "variants": {"on": ' + deep + "}}"),
    ("/ofrep/v1/evaluate/flags/deep", lambda deep: '{"context": {"targetingKey": "u", "x": ' + deep + "}}"),
    ("/api/v1/runbooks/validate", lambda deep: '{"content": ' + deep + "}"),
])
def test_json_nested_deep_is_a_4xx_not_a_500(admin, path, wrap, depth):
    deep = "[" * depth + "]" * depth
    answer = admin.post(path, content=wrap(deep), headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    body = answer.json()
    assert set(body.get("error", body)) & {"code", "errorCode"}, body  # OFREP answers in its own error shape
    assert admin.get("/healthz").status_code == 200
