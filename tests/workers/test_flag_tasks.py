"""Temporary flag changes revert through a real beat process (its own sweep thread; a worker runs beside it as in
production), at most 2 s late, audited as system."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from server.auth.models import Role
from server.dispatch_queue import PING_TASK, send
from server.flags.models import FlagExpiry
from server.models_base import as_utc
from tests.conftest import subprocess_env
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http, wait_for, worker_and_beat


@pytest.fixture(scope="module")
def operator_token(make_token):
    return make_token(Role.operator)


@pytest.fixture(scope="module")
def client_token(make_token):
    return make_token(Role.client)


@pytest.fixture(scope="module")
def beat_and_worker(settings, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("flag-beat") / "processes.log"
    # Beat and worker on a queue of their own, apart from other tests' workers (beat itself runs the reverts).
    queue = f"flags-{uuid.uuid4().hex[:8]}"
    env = subprocess_env(settings, RUNBOOKD_DEFAULT_QUEUE=queue)
    with worker_and_beat(env, log_path, name="flags"):
        # Caught up: a ping sent now is handled after beat's first sends, so the 2 s bound below is measured on
        # a running system, not one still starting on a loaded machine.
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        send(PING_TASK, warm, settings=settings, queue=queue)
        wait_for(lambda: warm.encode() in log_path.read_bytes(), 60, "the worker to catch up with beat")
        yield log_path


def _evaluate(base_url, token, key):
    with http(base_url, token) as client:
        return client.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {}}).json()


def test_kill_switch_for_a_while_reverts_by_itself(beat_and_worker, base_url, operator_token, client_token, engine,
                                                   make_incident):
    incident = make_incident()
    key = new_key("kill")
    with http(base_url, operator_token) as api:
        assert api.post("/api/v1/flags", json=flag_body(key, enabled=True, default_variant="on")).status_code == 201
        killed = api.patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}},
                                                        "for": "2s", "reason": f"{incident} checkout errors",
                                                        "incident_id": incident})
        assert killed.status_code == 200, killed.text
        assert killed.json()["pending_expiries"][0]["revert_to"] == 1
        assert _evaluate(base_url, client_token, key)["reason"] == "DISABLED"

        wait_for(lambda: api.get(f"/api/v1/flags/{key}").json()["version"] == 3, 30, "the revert")
        versions = api.get(f"/api/v1/flags/{key}/versions").json()
        revert = versions[0]
        assert revert["action"] == "flag.expire" and revert["actor"] == "system"
        assert revert["incident_id"] == incident and f"{incident} checkout errors" in revert["reason"]
        assert revert["spec"] == versions[2]["spec"]
        events = api.get("/api/v1/audit", params={"target_id": key, "action": "flag.expire"}).json()["items"]
        assert events[0]["actor"] == "system" and events[0]["before"]["version"] == 2
    with Session(engine) as session:
        expiry = session.exec(select(FlagExpiry).where(FlagExpiry.flag_key == key)).one()
    assert expiry.status == "applied"
    lateness = as_utc(expiry.resolved_at) - as_utc(expiry.expires_at)
    assert timedelta(0) <= lateness <= timedelta(seconds=2), lateness
    wait_for(lambda: _evaluate(base_url, client_token, key)["reason"] == "STATIC", 2, "evaluation to follow")


def test_a_later_change_supersedes_the_expiry(beat_and_worker, base_url, operator_token, engine):
    key = new_key("kill")
    with http(base_url, operator_token) as api:
        api.post("/api/v1/flags", json=flag_body(key, enabled=True))
        api.patch(f"/api/v1/flags/{key}", json={"default_variant": "on", "for": "2s"})
        later = api.patch(f"/api/v1/flags/{key}", json={"description": "a deliberate change"})
        assert later.json()["pending_expiries"] == []
        # A second flag whose expiry falls due after the first one would have: once beat has reverted it, the
        # sweeps have passed the first one's time too.
        marker = new_key("kill")
        api.post("/api/v1/flags", json=flag_body(marker, enabled=True))
        api.patch(f"/api/v1/flags/{marker}", json={"default_variant": "on", "for": "2s"})
        wait_for(lambda: api.get(f"/api/v1/flags/{marker}").json()["version"] == 3, 15, "the marker's revert")
        assert api.get(f"/api/v1/flags/{key}").json()["version"] == 3  # nothing reverted
        audit = api.get("/api/v1/audit", params={"target_id": key, "action": "flag.update"}).json()["items"][0]
        assert audit["after"]["superseded_expiries"][0]["version"] == 2
    with Session(engine) as session:
        expiry = session.exec(select(FlagExpiry).where(FlagExpiry.flag_key == key)).one()
    assert expiry.status == "superseded" and "version 3" in expiry.resolution
