"""Overrides for other services' loggers: the rails, newest-wins with in-order revert, ETag/304, audit, expiry."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

from server.audit.models import AuditEvent
from server.auth.models import Actor, Role, Source
from server.db import session_scope
from server.loglevels import service
from server.loglevels.models import LogLevelOverride
from server.models_base import utcnow
from tests.server.loglevels.processes import api_process
from tests.support import http, wait_for


def _service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def operator_token(make_token):
    return make_token(Role.operator)


@pytest.mark.parametrize(("body", "problem"), [
    ({"level": "DEBUG"}, "needs `for`"),
    ({"level": "trace", "reason": "no for"}, "needs `for`"),
    ({"level": "DEBUG", "for": "5h"}, "longer than the maximum 4h"),
    ({"level": "INFO", "for": "1d"}, "longer than the maximum 4h"),
    ({"level": "LOUD", "for": "1m"}, "unknown log level"),
    ({"level": "DEBUG", "for": "soon"}, "invalid duration"),
])
def test_rails_refuse_with_a_clear_422_and_write_nothing(base_url, operator_token, body, problem):
    name = _service()
    with http(base_url, operator_token) as client:
        response = client.post("/api/v1/loglevels", json={"service": name, "logger": "app.db", **body})
        listed = client.get("/api/v1/loglevels", params={"service": name, "active": False}).json()
        audit = client.get("/api/v1/audit", params={"target_id": f"{name}/app.db"}).json()["items"]
    assert response.status_code == 422, response.text
    assert problem in response.text
    assert listed == [] and audit == []


def test_an_override_is_read_by_its_service_with_etag_and_304_and_is_audited(base_url, operator_token, make_token,
                                                                               make_incident):
    inc = make_incident()
    name = _service()
    with http(base_url, operator_token) as client:
        created = client.post("/api/v1/loglevels", json={
            "service": name, "logger": "app.db", "level": "debug", "for": "15m",
            "reason": "checkout p99", "incident_id": inc})
    assert created.status_code == 201, created.text
    override = created.json()
    assert override["level"] == "DEBUG" and override["active"] and override["effective"]
    assert override["incident_id"] == inc

    with http(base_url, make_token(Role.client)) as agent:  # the lowest role is enough for a service's agent
        first = agent.get(f"/api/v1/loglevels/{name}")
        again = agent.get(f"/api/v1/loglevels/{name}", headers={"If-None-Match": first.headers["etag"]})
        other = agent.get(f"/api/v1/loglevels/{_service()}")
        refused = agent.get("/api/v1/loglevels")
    assert first.status_code == 200
    body = first.json()
    assert body["loggers"]["app.db"]["level"] == "DEBUG"
    assert body["loggers"]["app.db"]["override_id"] == override["id"]
    assert 0 < body["poll_after_seconds"] <= 900
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert other.json()["loggers"] == {} and other.headers["etag"] != first.headers["etag"]
    assert refused.status_code == 403  # listing every service's overrides takes a viewer

    with http(base_url, operator_token) as client:
        events = client.get("/api/v1/audit", params={"target_id": f"{name}/app.db"}).json()["items"]
    assert [e["action"] for e in events] == ["loglevel.raise"]
    assert events[0]["before"] is None and events[0]["after"]["level"] == "DEBUG"
    assert events[0]["reason"] == "checkout p99" and events[0]["incident_id"] == inc


def test_overlapping_overrides_newest_wins_and_they_revert_in_order(base_url, operator_token):
    name = _service()

    def effective(client):
        return {k: v["level"] for k, v in client.get(f"/api/v1/loglevels/{name}").json()["loggers"].items()}

    with http(base_url, operator_token) as client:
        older = client.post("/api/v1/loglevels", json={"service": name, "logger": "app", "level": "INFO",
                                                       "for": "1h"}).json()
        newer = client.post("/api/v1/loglevels", json={"service": name, "logger": "app", "level": "DEBUG",
                                                       "for": "10m"}).json()
        client.post("/api/v1/loglevels", json={"service": name, "logger": "other", "level": "ERROR"})
        assert effective(client) == {"app": "DEBUG", "other": "ERROR"}
        listed = {o["id"]: o for o in client.get("/api/v1/loglevels", params={"service": name}).json()}
        assert listed[newer["id"]]["effective"] and not listed[older["id"]]["effective"]

        ended = client.delete(f"/api/v1/loglevels/overrides/{newer['id']}", params={"reason": "enough"})
        assert ended.status_code == 200 and ended.json()["ended_by"].startswith("operator-")
        assert effective(client) == {"app": "INFO", "other": "ERROR"}  # the older one applies again
        assert client.get(f"/api/v1/loglevels/overrides/{older['id']}").json()["effective"] is True

        again = client.delete(f"/api/v1/loglevels/overrides/{newer['id']}")
        assert again.status_code == 200 and again.json()["ended_at"] == ended.json()["ended_at"]
        client.delete(f"/api/v1/loglevels/overrides/{older['id']}")
        assert effective(client) == {"other": "ERROR"}
        assert client.delete("/api/v1/loglevels/overrides/999999999").status_code == 404

        events = client.get("/api/v1/audit", params={"target_id": f"{name}/app"}).json()["items"]
    assert [e["action"] for e in events] == ["loglevel.end", "loglevel.end", "loglevel.raise", "loglevel.raise"]
    assert events[2]["before"]["id"] == older["id"]  # the second raise records what it covered
    assert events[1]["reason"] == "enough"


def test_expired_overrides_stop_applying_on_time_and_the_sweep_audits_them_as_system(base_url, operator_token,
                                                                                      engine, make_incident):
    inc = make_incident()
    name = _service()
    with http(base_url, operator_token) as client:
        short = client.post("/api/v1/loglevels", json={"service": name, "logger": "app", "level": "DEBUG",
                                                       "for": "1s", "incident_id": inc}).json()
        assert set(client.get(f"/api/v1/loglevels/{name}").json()["loggers"]) == {"app"}
        # Not swept (no beat here), yet out of effect once its second is up: agents never wait for beat.
        wait_for(lambda: client.get(f"/api/v1/loglevels/{name}").json()["loggers"] == {}, 3,
                 "the one-second override to stop applying")

    with session_scope(engine) as session:
        ended = service.expire_due(session)
        assert short["id"] in [row.id for row in ended]
    with session_scope(engine) as session:
        assert short["id"] not in [r.id for r in service.expire_due(session, now=utcnow())]  # ended once only
        row = session.get(LogLevelOverride, short["id"])
        assert row.ended_by == "system" and row.end_reason == "expire"
        event = session.exec(select(AuditEvent).where(AuditEvent.target_id == f"{name}/app",
                                                      AuditEvent.action == "loglevel.expire")).one()
        assert event.actor == "system" and event.source == "system" and event.incident_id == inc
        assert event.before["ended_at"] is None and event.after["ended_by"] == "system"
        assert "expired" in event.reason


def test_raise_level_is_the_function_steps_and_chat_call(engine, make_incident):
    inc = make_incident()
    actor = Actor(name="runbook:checkout-latency", role=Role.operator, source=Source.system)
    name = _service()
    with session_scope(engine) as session:
        row = service.raise_level(session, service=name, logger="app.db", level="WARNING",
                                  duration=timedelta(minutes=5), actor=actor, incident_id=inc)
        assert row.level == "WARN"
    with session_scope(engine) as session:
        assert service.effective_levels(session, service=name).loggers["app.db"].level == "WARN"
        service.end_override(session, override_id=row.id, actor=actor, reason="compensation")
    with session_scope(engine) as session:
        assert service.effective_levels(session, service=name).loggers == {}


@pytest.mark.slow
def test_a_starting_process_sweeps_expiries_missed_while_nothing_ran(settings, engine, tmp_path):
    name = _service()
    with session_scope(engine) as session:
        row = service.raise_level(session, service=name, logger="app", level="DEBUG",
                                  duration=timedelta(milliseconds=300),
                                  actor=Actor(name="pytest", role=Role.operator, source=Source.cli))
    time.sleep(0.5)
    with session_scope(engine) as session:
        assert session.get(LogLevelOverride, row.id).ended_at is None  # nobody has written the end down yet
    with api_process(settings, tmp_path / "api.log"):
        def swept() -> bool:
            with session_scope(engine) as session:
                return session.get(LogLevelOverride, row.id).ended_by == "system"

        wait_for(swept, 10, "the starting api to sweep the missed expiry")


def test_event_stream_pushes_each_change_and_each_expiry_on_one_connection(base_url, operator_token, make_token):
    name = _service()
    events: list[dict] = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {make_token(Role.client)}"},
                      timeout=httpx.Timeout(10)) as agent, agent.stream(
            "GET", f"/api/v1/loglevels/{name}/events", params={"keepalive": 1}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()

        def next_levels() -> dict:
            for line in lines:
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    return events[-1]
            raise AssertionError("the stream ended")

        assert next_levels()["loggers"] == {}
        with http(base_url, operator_token) as client:
            client.post("/api/v1/loglevels", json={"service": name, "logger": "app", "level": "DEBUG", "for": "1s"})
        assert next_levels()["loggers"]["app"]["level"] == "DEBUG"
        assert next_levels()["loggers"] == {}  # sent at the expiry, without anyone asking
