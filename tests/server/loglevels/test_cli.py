"""`runbookd loglevel set/list/end` against a live server, as an operator types them."""

from __future__ import annotations

import logging
import subprocess
import uuid

from server.auth.models import Role
from tests.support import cli, http


def runbookd(base_url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(["loglevel", *args],
               {"RUNBOOKD_URL": base_url, "RUNBOOKD_TOKEN": token, "RUNBOOKD_CONFIG": "/nonexistent"})


def test_set_list_end(base_url, make_token, make_incident):
    inc = make_incident()
    operator = make_token(Role.operator)
    service = f"svc-{uuid.uuid4().hex[:8]}"
    done = runbookd(base_url, operator, "set", service, "app.db", "debug", "--for", "15m", "--reason", "slow",
                    "--incident", inc)
    assert done.returncode == 0, done.stderr
    override_id = int(done.stdout.strip())
    assert f"{service} app.db at DEBUG" in done.stderr

    listed = runbookd(base_url, operator, "list", "--service", service)
    assert listed.returncode == 0, listed.stderr
    assert f"{override_id} *" in listed.stdout and "DEBUG" in listed.stdout and "slow" in listed.stdout

    ended = runbookd(base_url, operator, "end", str(override_id), "--reason", "found it")
    assert ended.returncode == 0 and "ended" in ended.stderr
    with http(base_url, operator) as client:
        assert client.get(f"/api/v1/loglevels/{service}").json()["loggers"] == {}
    assert "end by operator-" in runbookd(base_url, operator, "list", "--service", service, "--all").stdout


def test_runbookd_own_logger_and_clear_errors(base_url, make_token, admin_token):
    name = f"rbdtest.cli.{uuid.uuid4().hex[:6]}"
    done = runbookd(base_url, admin_token, "set", "_runbookd", name, "WARN", "--for", "1m")
    assert done.returncode == 0, done.stderr
    assert logging.getLogger(name).level == logging.WARNING  # the api under test runs in this process
    # It prints the override id, as `set` does for any service, and a bare `list` shows runbookd's own too.
    printed = done.stdout.strip()
    assert printed.isdigit() and f"override {printed}: runbookd's logger {name!r} at WARN" in done.stderr
    listed = runbookd(base_url, admin_token, "list")
    row = next(line for line in listed.stdout.splitlines() if name in line)
    assert "_runbookd" in row and printed in row

    refused = runbookd(base_url, make_token(Role.operator), "set", "svc-a", "app", "DEBUG")
    assert refused.returncode == 1 and "needs `for`" in refused.stderr
    forbidden = runbookd(base_url, make_token(Role.viewer), "set", "svc-a", "app", "INFO")
    assert forbidden.returncode == 1 and "not allowed" in forbidden.stderr
    unreachable = runbookd("http://127.0.0.1:9", admin_token, "list")
    assert unreachable.returncode == 1 and "cannot reach runbookd" in unreachable.stderr
