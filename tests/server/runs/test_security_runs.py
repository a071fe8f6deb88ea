"""Issue 15, finding 1: an operator could read the worker's secrets through a run, and approve their own step."""

from __future__ import annotations

import time
from urllib.parse import quote

from server.auth.models import Role
from tests.support import http, start, steps, wait_run


def test_a_shell_step_sees_a_minimal_environment_never_the_workers(operator, run_worker, runs_settings):
    run = wait_run(operator, start(operator, "printenv")["id"])
    assert run["status"] == "succeeded", run
    printed = steps(run)["show"]["outputs"]["stdout"]
    names = {line.split("=", 1)[0] for line in printed.splitlines()}
    assert "PATH" in names and "GIVEN=by-the-runbook" in printed
    # The worker runs with RUNBOOKD_DATABASE_URL, RUNBOOKD_REDIS_URL, RUNBOOKD_HOME, ... in its environment.
    assert not [n for n in names if n.startswith("RUNBOOKD_")], printed
    assert runs_settings.effective_database_url not in printed and runs_settings.redis_url not in printed


def test_by_others_the_starter_may_not_approve_but_another_operator_may(operator, run_worker, runs_api, make_token):
    run = start(operator, "four-eyes")
    wait_run(operator, run["id"], statuses={"waiting_approval"})
    own = operator.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={})
    assert own.status_code == 403 and "second person" in own.json()["error"]["message"]
    with http(runs_api, make_token(Role.viewer)) as viewer:
        assert viewer.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={}).status_code == 403
    with http(runs_api, make_token(Role.operator)) as colleague:
        assert colleague.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={}).status_code == 202
    done = wait_run(operator, run["id"])
    assert done["status"] == "succeeded" and steps(done)["gated"]["approval"] == "approved"


def test_the_starter_may_still_reject_their_own_four_eyes_step(operator, run_worker):
    run = start(operator, "four-eyes")
    wait_run(operator, run["id"], statuses={"waiting_approval"})
    assert operator.post(f"/api/v1/runs/{run['id']}/steps/gated/reject", json={"reason": "no"}).status_code == 202
    assert wait_run(operator, run["id"])["status"] == "failed"


def test_the_approval_by_others_setting_makes_every_gate_four_eyes(operator, run_worker, runs_settings, make_token):
    from server.app import create_app
    from tests.support import serve

    with serve(create_app(runs_settings.model_copy(update={"approval_by_others": True}))) as strict_api, \
            http(strict_api, make_token(Role.operator, "starter-" + runs_settings.default_queue[-6:])) as starter:
        run = start(starter, "approval")
        wait_run(starter, run["id"], statuses={"waiting_approval"})
        own = starter.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={})
        assert own.status_code == 403, own.text
        assert operator.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={}).status_code == 202
        assert wait_run(starter, run["id"])["status"] == "succeeded"


def test_a_secret_in_a_requested_url_never_reaches_the_worker_log(operator, run_worker, runs_api):
    token = "s3cr3t-" + str(time.time_ns())
    run = wait_run(operator, start(operator, "secret-url", {"base": runs_api, "token": token})["id"])
    assert run["status"] == "succeeded", run
    log = run_worker.read_text()
    assert token not in log and quote(token) not in log


def test_the_request_hash_cannot_confirm_a_guessed_secret(operator, engine):
    import hashlib

    import orjson
    from sqlmodel import select

    from server.db import session_scope
    from server.runs.models import Run

    pin = "4711"
    key = "idem-" + str(time.time_ns())
    body = {"runbook": "secrets", "params": {"password": pin}, "incident_id": None, "dry_run": False}
    first = operator.post("/api/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    with session_scope(engine) as session:
        stored = session.exec(select(Run.request_hash).where(Run.id == first.json()["id"])).one()
    # The offline attack: hash the body with every 4-digit pin until one matches the stored hash.
    guesses = [hashlib.sha256(orjson.dumps({**body, "params": {"password": f"{n:04d}"}},
                                           option=orjson.OPT_SORT_KEYS)).hexdigest() for n in range(10000)]
    assert stored not in guesses
    again = operator.post("/api/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]  # idempotency still works


def test_a_bad_secret_is_never_echoed_in_the_422(operator):
    answer = operator.post("/api/v1/runs", json={"runbook": "secret-pin",
                                                 "params": {"pin": "12ab-secret", "zone": "hidden-zone-9"}})
    assert answer.status_code == 422, answer.text
    assert "12ab-secret" not in answer.text and "hidden-zone-9" not in answer.text
    fields = {d["field"] for d in answer.json()["error"]["details"]}
    assert fields == {"params.pin", "params.zone"}


def test_a_secret_too_short_to_mask_in_logs_is_refused_without_echo(operator):
    answer = operator.post("/api/v1/runs", json={"runbook": "secret-pin", "params": {"pin": 731, "zone": "north"}})
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["field"] == "params.pin" and "at least 4 characters" in detail["message"]
    assert "731" not in answer.text
    assert operator.post("/api/v1/runs", json={"runbook": "secret-pin",
                                               "params": {"pin": 7310, "zone": "north"}}).status_code == 202


def test_a_value_rendered_from_a_secret_is_masked_like_the_secret(operator, run_worker):
    password = "pw-" + str(time.time_ns())
    run = wait_run(operator, start(operator, "secret-filters", {"password": password})["id"])
    assert run["status"] == "succeeded", run
    shown = str(run)
    for derived in (password.upper(), password[::-1], password.replace("-", "_")):
        assert derived not in shown and derived not in run_worker.read_text()
    assert steps(run)["upper"]["outputs"]["message"] == "***" and run["outputs"]["shouting"] == "***"
