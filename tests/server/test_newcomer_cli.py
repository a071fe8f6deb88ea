"""The CLI where a newcomer first meets it: no RUNBOOKD_HOME, no database, no RUNBOOKD_URL."""

from __future__ import annotations

import os
import subprocess
import sys

from server.client import load_config
from tests.support import REPO


def _bare_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
    env.update(HOME=str(tmp_path), RUNBOOKD_CONFIG="/nonexistent", PYTHONPATH=str(REPO), **extra)
    return env


def test_token_create_without_a_database_says_what_to_set_and_creates_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "server.cli", "token", "create", "--name", "me", "--role", "admin"],
                          cwd=tmp_path, env=_bare_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 4, done.stderr
    assert "no runbookd database at" in done.stderr and "RUNBOOKD_HOME is unset" in done.stderr
    assert "Set RUNBOOKD_HOME" in done.stderr and "RUNBOOKD_DATABASE_URL" in done.stderr
    assert not (tmp_path / ".runbookd").exists(), "no stray ./.runbookd"


def test_token_create_against_an_unmigrated_database_says_migrate(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "runbookd.sqlite3").touch()
    done = subprocess.run([sys.executable, "-m", "server.cli", "token", "list"], cwd=tmp_path,
                          env=_bare_env(tmp_path, RUNBOOKD_HOME=str(home)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "runbookd migrate" in done.stderr and "Traceback" not in done.stderr


def test_the_cli_honours_runbookd_port_when_no_url_is_set(monkeypatch):
    monkeypatch.delenv("RUNBOOKD_URL", raising=False)
    monkeypatch.setenv("RUNBOOKD_CONFIG", "/nonexistent")
    monkeypatch.setenv("RUNBOOKD_PORT", "8123")
    assert load_config().url == "http://127.0.0.1:8123"
    monkeypatch.setenv("RUNBOOKD_URL", "http://api.example:9000")
    assert load_config().url == "http://api.example:9000"
