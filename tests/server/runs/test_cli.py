"""`runbookd run ... --follow` and `runbookd runs ...` as a user runs them, against a live server: the commands
in-process (tests.support.cli, the same commands, output and exit status), and as a subprocess where the process
is the point: the live view on a terminal, and Ctrl-C (SIGINT) leaving the run going."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

from server.app import create_app
from server.auth.models import Role
from tests import support
from tests.support import REPO, free_port_url, http, serve


def _env(url: str, token: str | None, tmp_path) -> dict[str, str]:
    """A user's environment with nothing of ours in it but the server and the token."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RUNBOOKD_URL": url}
    if token:
        env["RUNBOOKD_TOKEN"] = token
    return env


def cli(args: list[str], url: str, token: str | None, tmp_path) -> subprocess.CompletedProcess:
    """The command in this process; only the server and the token set (no config file: HOME is tmp_path's in
    the subprocesses, so RUNBOOKD_CONFIG names a file that is not there)."""
    env = {"RUNBOOKD_URL": url, "RUNBOOKD_CONFIG": str(tmp_path / "no-config.toml")}
    if token:
        env["RUNBOOKD_TOKEN"] = token
    return support.cli(args, env)


def cli_in_terminal(args: list[str], url: str, token: str, tmp_path, timeout: float = 60) -> tuple[int, str]:
    """The CLI on a pseudo-terminal, as someone at a shell runs it: Rich draws its live view there."""
    env = {**_env(url, token, tmp_path), "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    controller, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", *args], stdin=terminal, stdout=terminal,
                            stderr=terminal, cwd=REPO, env=env)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: the program ended and closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


def test_run_follow_exits_zero_only_when_the_run_succeeds(runs_api, run_worker, make_token, tmp_path):
    token = make_token(Role.operator)
    ok = cli(["run", "trio", "who=cli", "n=4", "--follow", "--output", "json"], runs_api, token, tmp_path)
    assert ok.returncode == 0, ok.stderr
    run = json.loads(ok.stdout)
    assert run["status"] == "succeeded" and run["outputs"] == {"n": 4, "greeting": "hello cli"}
    failing = cli(["run", "timeouts", "--follow"], runs_api, token, tmp_path)
    assert failing.returncode == 1
    assert "failed" in failing.stderr and "overrun" in failing.stdout + failing.stderr


def test_run_follow_into_a_pipe_prints_lines_as_events_come(runs_api, run_worker, make_token, tmp_path):
    # chatty waits a moment first, so the follower is there for its output lines (which are live only).
    piped = cli(["run", "chatty", "--follow"], runs_api, make_token(Role.operator), tmp_path)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    expected = ["settle: succeeded", "before: starting", "before: succeeded", "talker: one", "talker: two",
                "talker: succeeded"]
    assert lines[:6] == expected, piped.stdout
    assert any(line.startswith("run ") and line.endswith("(chatty): succeeded") for line in lines), piped.stdout


def test_run_follow_draws_its_live_view_on_a_terminal(runs_api, run_worker, make_token, tmp_path):
    # On a terminal the live view renders the run while it is still queued, a status with no colour.
    code, screen = cli_in_terminal(["run", "trio", "who=tty", "--follow"], runs_api, make_token(Role.operator),
                                   tmp_path)
    assert code == 0, screen
    assert "Traceback" not in screen and re.search(r"run \d+ succeeded", screen), screen


def test_runs_list_shows_a_queued_run(runs_settings, make_token, tmp_path):
    offline = runs_settings.model_copy(update={"redis_url": free_port_url("redis")})  # the run stays queued
    token = make_token(Role.operator)
    with serve(create_app(offline)) as url, http(url, token) as client:
        run = client.post("/api/v1/runs", json={"runbook": "trio"}).json()
        listed = cli(["runs", "list", "--status", "queued"], url, token, tmp_path)
        shown = cli(["runs", "show", str(run["id"])], url, token, tmp_path)
    assert listed.returncode == 0 and str(run["id"]) in listed.stdout and "queued" in listed.stdout, listed.stderr
    assert shown.returncode == 0 and "queued" in shown.stdout, shown.stderr


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


def test_ctrl_c_leaves_the_run_going_and_runs_follow_reattaches(runs_api, run_worker, make_token, tmp_path):
    import signal

    token = make_token(Role.operator)
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", "slow-shell", "seconds=3", "--follow"],
                            cwd=REPO, env={**_env(runs_api, token, tmp_path), "COLUMNS": "200"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with http(runs_api, token) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = client.get("/api/v1/runs", params={"runbook": "slow-shell", "status": "running",
                                                         "limit": 1}).json()["items"]
            if running:
                break
            time.sleep(0.2)
        assert running, "the run never started"
        run_id = running[0]["id"]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert f"run {run_id} goes on on the server. Reattach: runbookd runs follow {run_id}" in err
        assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "running"  # Ctrl-C stopped nothing

        again = cli(["runs", "follow", str(run_id)], runs_api, token, tmp_path)
        assert again.returncode == 0, again.stderr
        assert f"run {run_id} succeeded" in again.stderr and "sleeper: succeeded" in again.stdout

        rerun = cli(["runs", "rerun", str(run_id), "seconds=0", "--follow"], runs_api, token, tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert f"reruns run {run_id}" in rerun.stderr
        newest = client.get("/api/v1/runs", params={"runbook": "slow-shell", "limit": 1}).json()["items"][0]
        assert newest["id"] != run_id and newest["status"] == "succeeded"
        assert client.get(f"/api/v1/runs/{newest['id']}").json()["rerun_of"] == run_id
