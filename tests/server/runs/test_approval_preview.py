"""Approvals you can read: a waiting step shows what it will run (argv, method and URL, inputs with secrets
masked) in the API, the SSE event, `runs show`, `run --follow`; a dry run shows every step's inputs, and a
gated step whose if: reads an earlier step says it would wait for approval if that holds."""

from __future__ import annotations

import json

from server.auth.models import Role
from tests.server.runs.test_cli import cli
from tests.support import start, steps, wait_run

SECRET = "s3cr3t-t0ken-value"


def test_the_waiting_step_shows_what_it_will_run(operator, run_worker, runs_api, make_token, tmp_path):
    run = start(operator, "gated-actions", {"token": SECRET})
    parked = wait_run(operator, run["id"], statuses={"waiting_approval"})
    shown = steps(parked)["restart"]["outputs"]["awaiting_approval"]
    assert shown["action"] == "argv: echo restart checkout.service '--token=***'"
    assert shown["inputs"]["argv"] == ["echo", "restart", "checkout.service", "--token=***"]
    assert SECRET not in json.dumps(parked)

    with operator.stream("GET", f"/api/v1/runs/{run['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and "waiting_approval" in line:
                event = json.loads(line[5:])
                break
    assert event["data"]["action"] == shown["action"] and SECRET not in json.dumps(event)

    token = make_token(Role.viewer)
    show = cli(["runs", "show", str(run["id"])], runs_api, token, tmp_path)
    assert show.returncode == 0, show.stderr
    assert f"step restart waits for approval: runbookd runs approve {run['id']} restart" in show.stdout
    assert "will run: argv: echo restart checkout.service '--token=***'" in show.stdout
    assert SECRET not in show.stdout

    approver = make_token(Role.operator)
    approved = cli(["runs", "approve", str(run["id"]), "restart", "--reason", "read it"], runs_api, approver,
                   tmp_path)
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stderr and "will run: argv: echo restart" in approved.stderr
    second = wait_run(operator, run["id"], statuses={"waiting_approval"})
    tell = steps(second)["tell"]
    assert tell["approval"] == "waiting", tell
    shown = tell["outputs"]["awaiting_approval"]
    assert shown["action"] == "POST http://127.0.0.1:9/hooks/restart"
    assert shown["inputs"]["headers"]["Authorization"] == "***"
    assert shown["inputs"]["json"] == {"service": "checkout.service"}
    assert steps(second)["restart"]["outputs"].get("exit_code") == 0  # its real outputs replaced the preview
    operator.post(f"/api/v1/runs/{run['id']}/steps/tell/reject", json={"reason": "no hook today"})
    wait_run(operator, run["id"])


def test_a_dry_run_prints_every_steps_inputs_and_conditional_approvals(runs_api, run_worker, make_token, tmp_path):
    token = make_token(Role.operator)
    done = cli(["run", "gated-actions", f"token={SECRET}", "--dry-run", "--follow"], runs_api, token, tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "step probe (log) would run" in out and 'inputs: {"message":"probing"}' in out
    assert "step restart (shell) would run\n  would wait for approval\n  will run: argv: echo restart" in out
    assert ("step tell (http.request) would run\n  would wait for approval if steps.restart.status == "
            "'succeeded'\n  will run: POST http://127.0.0.1:9/hooks/restart") in out
    assert SECRET not in out
