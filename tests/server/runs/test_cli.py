"""`runbookd run ... --follow` and `runbookd runs ...` as a user runs them: a subprocess against a live server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from server.auth.models import Role
from tests.support import REPO, free_port_url


def cli(args: list[str], url: str, token: str | None, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RUNBOOKD_URL": url, "COLUMNS": "200"}
    if token:
        env["RUNBOOKD_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def test_run_follow_exits_zero_only_when_the_run_succeeds(runs_api, run_worker, make_token, tmp_path):
    token = make_token(Role.operator)
    ok = cli(["run", "trio", "who=cli", "n=4", "--follow", "--output", "json"], runs_api, token, tmp_path)
    assert ok.returncode == 0, ok.stderr
    run = json.loads(ok.stdout)
    assert run["status"] == "succeeded" and run["outputs"] == {"n": 4, "greeting": "hello cli"}
    failing = cli(["run", "timeouts", "--follow"], runs_api, token, tmp_path)
    assert failing.returncode == 1
    assert "failed" in failing.stderr and "overrun" in failing.stdout + failing.stderr


def test_run_reports_bad_params_and_missing_or_bad_tokens(runs_api, make_token, tmp_path):
    bad = cli(["run", "trio", "n=many"], runs_api, make_token(Role.operator), tmp_path)
    assert bad.returncode == 1 and "params.n" in bad.stderr
    no_token = cli(["run", "trio"], runs_api, None, tmp_path)
    assert no_token.returncode == 1 and "RUNBOOKD_TOKEN" in no_token.stderr
    viewer = cli(["run", "trio"], runs_api, make_token(Role.viewer), tmp_path)
    assert viewer.returncode == 1 and "operator role" in viewer.stderr
    refused = cli(["runs", "list"], free_port_url("http").rsplit("/", 1)[0], "x", tmp_path)
    assert refused.returncode == 1 and "connection refused" in refused.stderr


def test_runs_list_show_cancel_approve(runs_api, run_worker, make_token, tmp_path):
    token = make_token(Role.operator)
    started = cli(["run", "approval", "--output", "json"], runs_api, token, tmp_path)
    run_id = json.loads(started.stdout)["id"]
    for _ in range(100):
        shown = cli(["runs", "show", str(run_id), "--output", "json"], runs_api, token, tmp_path)
        if json.loads(shown.stdout)["status"] == "waiting_approval":
            break
        time.sleep(0.1)
    assert json.loads(shown.stdout)["status"] == "waiting_approval"
    approved = cli(["runs", "approve", str(run_id), "gated", "--reason", "looks fine"], runs_api, token, tmp_path)
    assert approved.returncode == 0, approved.stderr
    listed = cli(["runs", "list", "--runbook", "approval"], runs_api, token, tmp_path)
    assert listed.returncode == 0 and str(run_id) in listed.stdout
    gone = cli(["runs", "cancel", "999999"], runs_api, token, tmp_path)
    assert gone.returncode == 1 and "does not exist" in gone.stderr
