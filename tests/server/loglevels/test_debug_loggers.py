"""runbookd's own loggers through /debug/loggers: Actuator shape, admin only, audited, applied in every
process (this one, another api process, one started later) and reverted when `for` ends."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from server.auth.models import Role
from tests.server.loglevels.processes import api_process
from tests.support import http, wait_for


def _name() -> str:
    return f"rbdtest.own.{uuid.uuid4().hex[:8]}"


def test_list_has_the_actuator_shape(base_url, admin_token):
    logging.getLogger("rbdtest.listed").setLevel(logging.WARNING)
    with http(base_url, admin_token) as client:
        body = client.get("/debug/loggers").json()
    assert body["levels"] == ["OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
    assert body["loggers"]["rbdtest.listed"] == {"configuredLevel": "WARN", "effectiveLevel": "WARN"}
    assert "ROOT" in body["loggers"] and body["groups"] == {}


@pytest.mark.parametrize("role", [Role.client, Role.viewer, Role.operator])
def test_only_admins_may_read_or_change_them(base_url, make_token, role):
    with http(base_url, make_token(role)) as client:
        assert client.get("/debug/loggers").status_code == 403
        assert client.post("/debug/loggers/x", json={"configuredLevel": "INFO"}).status_code == 403


def test_set_applies_here_is_audited_and_reverts_when_for_ends(base_url, admin_token, make_incident):
    inc = make_incident()
    name = _name()
    target = logging.getLogger(name)
    with http(base_url, admin_token) as client:
        refused = client.post(f"/debug/loggers/{name}", json={"configuredLevel": "DEBUG"})
        assert refused.status_code == 422 and "needs `for`" in refused.text
        done = client.post(f"/debug/loggers/{name}", json={"configuredLevel": "DEBUG", "for": "4s",
                                                           "reason": "why is it slow", "incident_id": inc})
        assert done.status_code == 204, done.text
        # The answering process applied it before answering (the api under test runs in this process).
        assert target.level == logging.DEBUG
        one = client.get(f"/debug/loggers/{name}").json()
        assert one["configuredLevel"] == "DEBUG" and one["effectiveLevel"] == "DEBUG"
        assert one["override"]["incident_id"] == inc
        # 4 s, not less: on a loaded machine the answer and these reads must come before the revert.
        wait_for(lambda: target.level == logging.NOTSET, 15, "the level to revert by itself")
        assert client.get(f"/debug/loggers/{name}").json()["configuredLevel"] is None
        events = client.get("/api/v1/audit", params={"target_type": "server_logger",
                                                     "target_id": f"_runbookd/{name}"}).json()["items"]
    assert events[-1]["action"] == "loglevel.raise" and events[-1]["actor"].startswith("admin-")
    assert events[-1]["reason"] == "why is it slow"


def test_null_level_resets_like_actuator(base_url, admin_token):
    name = _name()
    logging.getLogger(name).setLevel(logging.ERROR)
    with http(base_url, admin_token) as client:
        client.post(f"/debug/loggers/{name}", json={"configuredLevel": "INFO"})  # no `for`: INFO is not verbose
        assert logging.getLogger(name).level == logging.INFO
        assert client.post(f"/debug/loggers/{name}", json={"configuredLevel": None}).status_code == 204
        assert client.get(f"/debug/loggers/{name}").json()["configuredLevel"] == "ERROR"  # its own level again
        actions = [e["action"] for e in client.get("/api/v1/audit", params={
            "target_id": f"_runbookd/{name}"}).json()["items"]]
    assert actions == ["loglevel.end", "loglevel.raise"]


@pytest.mark.slow
def test_a_change_reaches_other_api_processes_even_one_started_later(base_url, admin_token, settings, tmp_path):
    early, late = _name(), _name()

    def level_at(url, name):
        with http(url, admin_token) as client:
            return client.get(f"/debug/loggers/{name}").json()["configuredLevel"]

    with api_process(settings, tmp_path / "api-1.log") as (other, _proc):
        with http(base_url, admin_token) as client:
            client.post(f"/debug/loggers/{early}", json={"configuredLevel": "TRACE", "for": "2s"})
            client.post(f"/debug/loggers/{late}", json={"configuredLevel": "WARN", "for": "30s"})
        wait_for(lambda: level_at(other, early) == "TRACE", 5, "the other process to apply the change")
        started = time.monotonic()
        wait_for(lambda: level_at(other, early) is None, 10, "the other process to revert it")
        assert time.monotonic() - started < 4
    with api_process(settings, tmp_path / "api-2.log") as (later, _proc):
        assert level_at(later, late) == "WARN"  # applied at start-up from the database
        with http(base_url, admin_token) as client:
            client.post(f"/debug/loggers/{late}", json={"configuredLevel": None})
        wait_for(lambda: level_at(later, late) is None, 5, "the reset to reach the other process")
