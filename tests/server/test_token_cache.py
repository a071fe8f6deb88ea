"""The api's token cache: the database is asked once per TTL, yet a revocation takes effect at once.

Each test serves real apps (uvicorn on loopback) over the session's database and Redis; a second app in
the same test stands for a second api process: its own cache, its own revocation follower.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, event, update

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


@contextmanager
def lookups_of(token: str) -> Iterator[list[str]]:
    """The SELECTs on api_tokens for this token's hash, as this process's engines send them to the database."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "api_tokens" in statement and digest in str(parameters):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def test_a_cached_token_is_looked_up_once_per_ttl(settings, make_token):
    _name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": LONG_TTL}))) as url, \
            http(url, token) as client, lookups_of(token) as lookups:
        for _ in range(20):
            assert client.get("/api/v1/flags").status_code == 200
            assert client.post("/ofrep/v1/evaluate/flags", json={}).status_code == 200
    assert len(lookups) == 1, lookups


def test_an_expired_entry_is_looked_up_again(settings, make_token):
    _name, token = _token(make_token)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": 0.3}))) as url, \
            http(url, token) as client, lookups_of(token) as lookups:
        assert client.get("/api/v1/flags").status_code == 200
        assert client.get("/api/v1/flags").status_code == 200
        assert len(lookups) == 1
        wait_for(lambda: client.get("/api/v1/flags").status_code == 200 and len(lookups) == 2, 5,
                 "the entry to expire and the token to be looked up again")


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
        with lookups_of(token) as lookups:
            for _ in range(5):
                assert client.get("/api/v1/flags").status_code == 200
        assert len(lookups) == 5, lookups
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
