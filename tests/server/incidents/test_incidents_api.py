"""Incidents over the API: open, read, change status with timestamps, all audited under the incident."""

from __future__ import annotations

from server.auth.models import Role
from tests.support import http


def test_open_update_resolve(base_url, make_token):
    operator, viewer = make_token(Role.operator), make_token(Role.viewer)
    with http(base_url, operator) as client:
        opened = client.post("/api/v1/incidents", json={"title": "Checkout is slow", "severity": "sev2"})
        assert opened.status_code == 201, opened.text
        incident = opened.json()
        assert incident["id"].startswith("INC-") and incident["status"] == "open"
        assert incident["commander"].startswith("operator-")
        mitigated = client.patch(f"/api/v1/incidents/{incident['id']}",
                                 json={"status": "mitigated", "reason": "flag off"}).json()
        assert mitigated["mitigated_at"] and not mitigated["resolved_at"]
        number = incident["id"].removeprefix("INC-")
        resolved = client.patch(f"/api/v1/incidents/{number}", json={"status": "resolved"}).json()
        assert resolved["resolved_at"] and resolved["mitigated_at"] == mitigated["mitigated_at"]
    with http(base_url, viewer) as client:
        assert client.get(f"/api/v1/incidents/{incident['id']}").json()["status"] == "resolved"
        assert any(i["id"] == incident["id"] for i in client.get("/api/v1/incidents?status=resolved").json())
        assert client.post("/api/v1/incidents", json={"title": "x"}).status_code == 403
        events = client.get("/api/v1/audit", params={"incident_id": incident["id"]}).json()["items"]
    assert [e["action"] for e in events] == ["incident.resolved", "incident.mitigated", "incident.open"]
    assert events[0]["before"]["status"] == "mitigated" and events[0]["after"]["status"] == "resolved"


def test_bad_input_is_named(base_url, make_token):
    with http(base_url, make_token(Role.operator)) as client:
        bad = client.post("/api/v1/incidents", json={"title": "", "severity": "sev9", "colour": "red"})
        missing = client.get("/api/v1/incidents/INC-999999")
        empty = client.post("/api/v1/incidents", json={"title": "t"}).json()
        nothing = client.patch(f"/api/v1/incidents/{empty['id']}", json={})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"title", "severity", "colour"}
    assert missing.status_code == 404 and "INC-12" in missing.json()["error"]["message"]
    assert nothing.status_code == 422 and "nothing to change" in nothing.json()["error"]["message"]


def test_runs_flags_and_overrides_may_only_name_a_real_incident(base_url, make_token, make_incident):
    real = make_incident()
    with http(base_url, make_token(Role.operator)) as client:
        typo = client.post("/api/v1/loglevels", json={"service": "checkout", "logger": "app.db", "level": "INFO",
                                                      "incident_id": "INC-999999"})
        short = client.post("/api/v1/loglevels", json={"service": "checkout", "logger": "app.db", "level": "INFO",
                                                       "incident_id": real.removeprefix("INC-")})
    assert typo.status_code == 422
    assert typo.json()["error"]["details"] == [{"field": "incident_id", "message": "unknown incident"}]
    assert short.status_code == 201 and short.json()["incident_id"] == real  # "7" is INC-7
