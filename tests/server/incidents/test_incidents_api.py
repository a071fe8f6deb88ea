"""Incidents over the API: open, read, change status with timestamps, all audited under the incident."""

from __future__ import annotations

import re
import uuid

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


def test_each_kind_of_change_refuses_an_unknown_incident_and_writes_nothing(base_url, make_token, make_incident):
    """Runs, flag changes and log-level overrides each resolve their incident: a typo is a 422 naming the field,
    nothing is written, and the short form (7 for INC-7) is stored as the incident's id."""
    real = make_incident()
    unknown = {"field": "incident_id", "message": "unknown incident"}
    key = f"inc-link-{uuid.uuid4().hex[:8]}"
    flag = {"key": key, "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off"}
    run = {"runbook": "http-health-triage", "params": {"base_url": "http://127.0.0.1:9"}, "dry_run": True}
    with http(base_url, make_token(Role.operator)) as client:
        runs_before = len(client.get("/api/v1/runs", params={"limit": 200}).json()["items"])
        typo_run = client.post("/api/v1/runs", json={**run, "incident_id": "INC-999999"})
        typo_flag = client.post("/api/v1/flags", json={**flag, "incident_id": "INC-999999"})
        assert typo_run.status_code == 422 and typo_run.json()["error"]["details"] == [unknown], typo_run.text
        assert typo_flag.status_code == 422 and typo_flag.json()["error"]["details"] == [unknown], typo_flag.text
        assert client.get(f"/api/v1/flags/{key}").status_code == 404
        assert len(client.get("/api/v1/runs", params={"limit": 200}).json()["items"]) == runs_before

        created = client.post("/api/v1/flags", json={**flag, "incident_id": real.removeprefix("INC-")})
        assert created.status_code == 201, created.text
        typo_change = client.patch(f"/api/v1/flags/{key}", json={"description": "x", "incident_id": "INC-999999"})
        assert typo_change.status_code == 422 and typo_change.json()["error"]["details"] == [unknown]
        assert client.get(f"/api/v1/flags/{key}").json()["version"] == 1
        started = client.post("/api/v1/runs", json={**run, "incident_id": real.removeprefix("INC-")})
        assert started.status_code == 202 and started.json()["incident_id"] == real, started.text
        versions = client.get(f"/api/v1/flags/{key}/versions").json()
        assert [v["incident_id"] for v in versions] == [real], versions


def test_report_says_when_each_log_level_change_was_made_and_words_its_timeline_rows(base_url, make_token):
    """"Changes made" gives a log-level change its time, in order with the flag changes; the timeline says a
    log-level change with the console's words, never the raw "loglevel.raise service x/y"."""
    service = f"svc-{uuid.uuid4().hex[:6]}"
    with http(base_url, make_token(Role.operator)) as client:
        incident = client.post("/api/v1/incidents", json={"title": "Slow checkout"}).json()["id"]
        first = client.post("/api/v1/loglevels", json={"service": service, "logger": "payments.db", "level": "INFO",
                                                        "incident_id": incident})
        assert first.status_code == 201, first.text
        raised = client.post("/api/v1/loglevels", json={"service": service, "logger": "payments.db",
                                                         "level": "DEBUG", "for": "15m", "reason": "slow queries",
                                                         "incident_id": incident}).json()
        assert client.delete(f"/api/v1/loglevels/overrides/{raised['id']}",
                             params={"reason": "seen enough"}).status_code == 200
        report = client.get(f"/api/v1/incidents/{incident}/report").text
    assert re.search(r"^A sev\d incident opened \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by ", report, re.M), report[:400]
    changes = report[report.index("## Changes made"):report.index("## Timeline")]
    rows = [line for line in changes.splitlines() if f"set log level of {service}" in line]
    at = raised["created_at"][:19].replace("T", " ")
    assert len(rows) == 2, rows
    assert rows[1].startswith(f"| {at} | set log level of {service} `payments.db` to DEBUG | "), rows
    assert rows[1].endswith(" | slow queries | ended |"), rows  # its reason, and what became of it in words
    first_at = rows[0].split("|")[1].strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first_at) and first_at <= at, rows
    assert rows[0].endswith(" | - | still in effect |"), rows
    timeline = report[report.index("## Timeline"):]
    assert "loglevel." not in timeline, timeline
    until = raised["expires_at"][:19].replace("T", " ")
    assert (f"Log level set: service {service}, logger payments.db, level DEBUG (was INFO), until {until} UTC "
            "(slow queries) |") in timeline, timeline
    assert f"Log level set: service {service}, logger payments.db, level INFO, until someone ends it |" in timeline
    assert re.search(rf"Log level override ended: service {service}, logger payments.db, level DEBUG, ended "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(seen enough\) \|", timeline), timeline


def test_report_says_in_words_what_undo_would_do_and_calls_runbookd_by_name(base_url, make_token):
    """The "now" column of "Changes made" says what the incident's undo would do, in the undo's words ("would
    be restored to version 1 on undo", not "restore"), and runbookd's own loggers are "runbookd (this server)",
    never the internal `_runbookd`, in the changes and the timeline alike."""
    from server.incidents.rollback import flag_outcome_words
    from server.loglevels.models import service_label
    from tests.server.flags.conftest import flag_body

    changed, created = (f"rep-{uuid.uuid4().hex[:6]}" for _ in range(2))
    logger = f"runbookd.report-{uuid.uuid4().hex[:6]}"
    with http(base_url, make_token(Role.admin)) as client:
        incident = client.post("/api/v1/incidents", json={"title": "Words in the report"}).json()["id"]
        assert client.post("/api/v1/flags", json=flag_body(changed)).status_code == 201
        assert client.patch(f"/api/v1/flags/{changed}", json={"default_variant": "on",
                                                               "incident_id": incident}).status_code == 200
        assert client.post("/api/v1/flags", json=flag_body(created, incident_id=incident)).status_code == 201
        own = client.post(f"/debug/loggers/{logger}", json={"configuredLevel": "DEBUG", "for": "15m",
                                                              "reason": "look inside", "incident_id": incident})
        assert own.status_code == 204, own.text
        report = client.get(f"/api/v1/incidents/{incident}/report").text
        plan = {f["flag"]: f for f in client.post(f"/api/v1/incidents/{incident}/rollback",
                                                  json={"dry_run": True}).json()["flags"]}
    assert "_runbookd" not in report, report
    changes = report[report.index("## Changes made"):report.index("## Timeline")]
    row = next(line for line in changes.splitlines() if f"changed flag {changed}" in line)
    assert row.endswith(" | would be restored to version 1 on undo |"), row
    assert flag_outcome_words(plan[changed]["outcome"], plan[changed]["target_version"]) in row  # the undo's words
    row = next(line for line in changes.splitlines() if f"created flag {created}" in line)
    assert row.endswith(" | would be deleted on undo (the incident created it) |"), row
    row = next(line for line in changes.splitlines() if logger in line)
    assert f"| set log level of runbookd (this server) `{logger}` to DEBUG |" in row, row
    assert row.endswith(" | look inside | still in effect |"), row
    timeline = report[report.index("## Timeline"):]
    assert f"Log level set: service runbookd (this server), logger {logger}, level DEBUG" in timeline, timeline
    assert service_label("_runbookd") == "runbookd (this server)" and service_label("checkout") == "checkout"
