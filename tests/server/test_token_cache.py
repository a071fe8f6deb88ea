"""The api's token cache: the database is asked once per TTL, yet a revocation takes effect at once.

Each test serves real apps (uvicorn on loopback) over the session's database and Redis; a second app in
the same test stands for a second api process: its own cache, its own revocation follower.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from sqlalchemy import update

from server.app import create_app
from server.auth.models import ApiToken, Role
from server.db import session_scope
from server.models_base import utcnow
from tests.conftest import subprocess_env
from tests.support import http, serve, wait_for

LONG_TTL = 3600.0  # so that only a revocation notice, never an expiry, can explain a refusal


def _token(make_token, role: Role = Role.viewer) -> tuple[str, str]:
    name = f"cache-{uuid.uuid4().hex[:8]}"
    return name, make_token(role, name=name)


def _revoke_in_database(engine, name: str) -> None:
    """A change no api process hears of: made in the database by hand."""
    with session_scope(engine) as session:
        session.exec(update(ApiToken).where(ApiToken.name == name)  # type: ignore[call-overload]
                     .values(revoked_at=utcnow()))


def test_revocation_through_the_api_refuses_the_token_at_once_everywhere_in_that_process(
        settings, make_token, admin_token):
    name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": LONG_TTL}))) as url:
        with http(url, token) as client:
            assert client.get("/api/v1/flags").status_code == 200  # now cached
            assert client.post("/ofrep/v1/evaluate/flags", json={}).status_code == 200
        with http(url, admin_token) as admin:
            assert admin.delete(f"/api/v1/tokens/{name}").status_code == 200
        with http(url, token) as client:
            for refused in (client.get("/api/v1/flags"), client.post("/ofrep/v1/evaluate/flags", json={})):
                assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_another_api_process_forgets_a_revoked_token_within_a_second(settings, make_token, admin_token):
    name, token = _token(make_token)
    long_lived = settings.model_copy(update={"auth_cache_seconds": LONG_TTL})
    with serve(create_app(long_lived)) as first, serve(create_app(long_lived)) as second:
        with http(second, token) as client:
            assert client.get("/api/v1/flags").status_code == 200  # cached in the second process
        with http(first, admin_token) as admin:
            assert admin.delete(f"/api/v1/tokens/{name}").status_code == 200
            revoked = time.monotonic()
        with http(second, token) as client:
            wait_for(lambda: client.get("/api/v1/flags").status_code == 401, 5, "the second process to refuse")
            took = time.monotonic() - revoked
    assert took < 1.5, f"the second process refused the token {took:.2f}s after the revocation"


def test_without_a_notice_a_revoked_token_works_no_longer_than_the_ttl(settings, make_token, engine):
    ttl = 1.0
    name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": ttl}))) as url, \
            http(url, token) as client:
        assert client.get("/api/v1/flags").status_code == 200
        cached_at = time.monotonic()
        _revoke_in_database(engine, name)
        while client.get("/api/v1/flags").status_code == 200:
            assert time.monotonic() - cached_at < ttl + 0.5, "still accepted after the TTL"
            time.sleep(0.05)
        assert "revoked" in client.get("/api/v1/flags").json()["error"]["message"]


def test_a_ttl_of_zero_checks_the_database_on_every_request(settings, make_token, engine):
    name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": 0}))) as url, \
            http(url, token) as client:
        assert client.get("/api/v1/flags").status_code == 200
        _revoke_in_database(engine, name)
        assert client.get("/api/v1/flags").status_code == 401


def test_runbookd_token_revoke_is_heard_by_a_running_api(settings, make_token):
    name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": LONG_TTL}))) as url, \
            http(url, token) as client:
        assert client.get("/api/v1/flags").status_code == 200
        done = subprocess.run([sys.executable, "-m", "server.cli", "token", "revoke", name],
                              env=subprocess_env(settings), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"token {name!r} revoked" in done.stderr
        wait_for(lambda: client.get("/api/v1/flags").status_code == 401, 5, "the api to refuse the token")
