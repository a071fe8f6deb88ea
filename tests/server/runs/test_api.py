"""The runs API without a worker: params checked (422 naming each), idempotency, secrets, filters, 404s."""

from __future__ import annotations

import uuid

from tests.support import start


def test_invalid_params_are_422_naming_each_bad_param(operator):
    response = operator.post("/api/v1/runs", json={"runbook": "trio", "params": {"n": "-1", "who": 3.5, "x": 1}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert {d["field"] for d in error["details"]} == {"params.n", "params.x"}  # 3.5 is a fine string
    assert error["message"].endswith(": x, n")
    missing = operator.post("/api/v1/runs", json={"runbook": "crash", "params": {}})
    assert missing.status_code == 422 and missing.json()["error"]["details"] == [
        {"field": "params.marker", "message": "required param is missing"}]
    unknown = operator.post("/api/v1/runs", json={"runbook": "no-such", "params": {}})
    assert unknown.status_code == 404


def test_idempotency_key_same_body_same_run_different_body_409(operator, make_incident):
    inc = make_incident()
    key = uuid.uuid4().hex
    body = {"runbook": "approval", "params": {}, "incident_id": inc}
    first = operator.post("/api/v1/runs", json=body, headers={"Idempotency-Key": key})
    again = operator.post("/api/v1/runs", json=body, headers={"Idempotency-Key": key})
    other = operator.post("/api/v1/runs", json={**body, "incident_id": make_incident()},
                          headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"


def test_secret_params_are_masked_when_shown(operator):
    run = start(operator, "secrets", {"password": "s3cret-value"})
    shown = operator.get(f"/api/v1/runs/{run['id']}").json()
    assert shown["params"] == {"password": "***"}
    listed = operator.get("/api/v1/runs", params={"runbook": "secrets"}).text
    assert "s3cret-value" not in listed


def test_filters_and_paging(operator, make_incident):
    incident = make_incident()
    ids = [start(operator, "approval", incident_id=incident)["id"] for _ in range(3)]
    page = operator.get("/api/v1/runs", params={"incident_id": incident, "limit": 2}).json()
    assert [r["id"] for r in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = operator.get("/api/v1/runs", params={"incident_id": incident, "cursor": page["next_cursor"]}).json()
    assert [r["id"] for r in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    bad = operator.get("/api/v1/runs", params={"status": "sleeping"})
    assert bad.status_code == 422 and "queued" in bad.json()["error"]["message"]
    assert operator.get("/api/v1/runs/999999999").status_code == 404
    assert operator.get("/api/v1/runs/999999999/events").status_code == 404
