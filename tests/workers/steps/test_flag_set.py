"""flag.set: the step against a real database and Redis, and a real run whose on_failure: rollback restores the flag."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from pydantic import ValidationError

from server.app import create_app
from server.auth.models import Actor, Role, Source
from server.db import session_scope
from server.flags import service
from server.flags.steps import FlagSetInputs
from server.runbooks.catalog import CATALOG
from tests.conftest import subprocess_env
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http, serve, wait_for
from workers.steps.base import StepContext, StepFailed, load_step_kinds


@pytest.fixture(scope="module")
def incident(make_incident):
    return make_incident()


def _ctx(settings, engine, incident) -> StepContext:
    actor = Actor(name="alice", role=Role.operator, source=Source.api)
    return StepContext(run_id=7, step_id="kill-pricing", attempt=1, actor=actor, incident_id=incident,
                       settings=settings, engine=engine)


@pytest.fixture
def flag_key(base_url, make_token):
    key = new_key("step")
    with http(base_url, make_token(Role.operator)) as api:
        assert api.post("/api/v1/flags", json=flag_body(key, enabled=True, default_variant="on")).status_code == 201
    return key


def test_set_then_compensate(settings, engine, flag_key, incident):
    step = load_step_kinds()["flag.set"]()
    assert CATALOG["flag.set"].compensates and step.has_compensation()
    inputs = FlagSetInputs.model_validate({"flag": flag_key, "enabled": False, "for": "1h"})
    outputs = step.run(inputs, _ctx(settings, engine, incident))
    assert outputs["version"] == 2 and outputs["previous_version"] == 1 and outputs["expires_at"]
    with session_scope(engine) as session:
        flag = service.get_flag(session, key=flag_key)
        assert flag.spec["environments"]["production"]["enabled"] is False
        latest = service.list_versions(session, key=flag_key)[0]
        assert (latest.actor, latest.incident_id, latest.reason) == ("alice", incident, "run 7, step kill-pricing")

    step.compensate(inputs, outputs, _ctx(settings, engine, incident))
    with session_scope(engine) as session:
        flag = service.get_flag(session, key=flag_key)
        assert flag.version == 3 and flag.spec["environments"]["production"]["enabled"] is True
        assert service.pending_expiries(session, key=flag_key) == []  # the rollback superseded the expiry


def test_compensation_leaves_a_newer_change_alone(settings, engine, flag_key, incident):
    step = load_step_kinds()["flag.set"]()
    inputs = FlagSetInputs.model_validate({"flag": flag_key, "variant": "off"})
    outputs = step.run(inputs, _ctx(settings, engine, incident))
    with session_scope(engine) as session:
        service.set_flag_state(session, key=flag_key, environment="production", enabled=False,
                               actor=Actor.system())
    step.compensate(inputs, outputs, _ctx(settings, engine, incident))
    with session_scope(engine) as session:
        assert service.get_flag(session, key=flag_key).version == 3


def test_failures_and_bad_inputs(settings, engine, incident):
    step = load_step_kinds()["flag.set"]()
    with pytest.raises(StepFailed, match="no flag"):
        step.run(FlagSetInputs.model_validate({"flag": "missing-flag", "enabled": False}),
                 _ctx(settings, engine, incident))
    with pytest.raises(ValidationError, match="enabled, variant or both"):
        FlagSetInputs.model_validate({"flag": "x"})


RUNBOOK = """
id: {id}
title: Kill a flag, then fail
on_failure: rollback
steps:
  - id: kill
    uses: flag.set
    with: {{flag: {key}, enabled: false, for: 1h}}
  - id: boom
    uses: assert
    with: {{that: "1 == 2", message: "the fix did not help"}}
"""


def test_a_failed_run_with_rollback_restores_the_flag(settings, admin_token, make_token, flag_key, tmp_path,
                                                      make_incident):
    incident = make_incident()
    runbook_id = f"flagkill-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "worker.log"
    # A queue of our own, so that workers other tests leave running cannot take (and sit on) this run.
    own = settings.model_copy(update={"default_queue": f"flagset-{uuid.uuid4().hex[:8]}"})
    with log_path.open("wb") as log, serve(create_app(own)) as base_url:
        worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--concurrency", "1",
                                   "--hostname", f"flagset-{uuid.uuid4().hex[:6]}@test"],
                                  env=subprocess_env(own, RUNBOOKD_DEFAULT_QUEUE=own.default_queue),
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: b" ready." in log_path.read_bytes() or worker.poll() is not None, 60, "worker to start")
            with http(base_url, admin_token) as admin:
                uploaded = admin.post("/api/v1/runbooks", json={"content": RUNBOOK.format(id=runbook_id,
                                                                                        key=flag_key)})
                assert uploaded.status_code == 201, uploaded.text
            with http(base_url, make_token(Role.operator)) as operator:
                run = operator.post("/api/v1/runs", json={"runbook": runbook_id, "incident_id": incident})
                assert run.status_code == 202, run.text
                run_id = run.json()["id"]
                deadline = time.monotonic() + 30
                while (state := operator.get(f"/api/v1/runs/{run_id}").json())["status"] not in (
                        "failed", "succeeded") and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert state["status"] == "failed", (state, log_path.read_text()[-3000:])
                versions = operator.get(f"/api/v1/flags/{flag_key}/versions").json()
        finally:
            worker.terminate()
            worker.wait(30)
    assert [v["action"] for v in versions] == ["flag.rollback", "flag.update", "flag.create"]
    assert versions[0]["spec"] == versions[2]["spec"] and versions[0]["incident_id"] == incident
    assert versions[1]["spec"]["environments"]["production"]["enabled"] is False
