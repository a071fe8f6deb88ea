"""Tokens: hashing, roles, expiry, revocation, and the role matrix over every endpoint class."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update
from sqlmodel import select

from server.auth.models import ApiToken, Role
from server.db import session_scope
from server.models_base import utcnow
from tests.support import http

# One row per endpoint class: (method, path, json body, least role allowed). Later issues add rows.
ENDPOINT_CLASSES = [
    ("GET", "/api/v1/audit", None, Role.viewer),
    ("GET", "/api/v1/tokens", None, Role.admin),
    ("POST", "/api/v1/tokens", {"role": "viewer"}, Role.admin),
    ("GET", "/api/v1/flags", None, Role.viewer),
    ("GET", "/api/v1/flag-environments", None, Role.viewer),
    ("POST", "/ofrep/v1/evaluate/flags", {"context": {}}, Role.client),
    ("GET", "/api/v1/loglevels", None, Role.viewer),
    ("POST", "/api/v1/loglevels", {"service": "role-matrix", "logger": "app", "level": "WARN", "for": "1m"},
     Role.operator),
    ("GET", "/api/v1/loglevels/role-matrix", None, Role.client),
    ("GET", "/debug/loggers", None, Role.admin),
    ("GET", "/debug/state", None, Role.admin),
    ("GET", "/api/v1/runbooks", None, Role.viewer),
    ("POST", "/api/v1/runbooks/validate", {"content": "title: t\nsteps: [{id: a, uses: log, with: {message: m}}]"},
     Role.viewer),
    ("POST", "/api/v1/runbooks/reload", None, Role.admin),
    ("POST", "/api/v1/runbooks",
     {"content": "id: role-matrix\ntitle: t\nsteps: [{id: a, uses: log, with: {message: m}}]"}, Role.admin),
    ("GET", "/api/v1/runs", None, Role.viewer),
    ("POST", "/api/v1/runs", {"runbook": "http-health-triage", "params": {"base_url": "http://127.0.0.1:9"},
                              "dry_run": True}, Role.operator),
]


# The matrix written out by hand: the status each role gets on each route. Nothing here comes from Role.allows,
# the function the server enforces with, so a role that grew more powerful shows up as a wrong status.
#   method  path                                    client viewer operator admin hook
ROLE_MATRIX = [
    ("GET", "/api/v1/audit",                           403, 200, 200, 200, 403),
    ("GET", "/api/v1/tokens",                          403, 403, 403, 200, 403),
    ("POST", "/api/v1/tokens",                         403, 403, 403, 201, 403),
    ("GET", "/api/v1/flags",                           403, 200, 200, 200, 403),
    ("GET", "/api/v1/flag-environments",               403, 200, 200, 200, 403),
    ("POST", "/ofrep/v1/evaluate/flags",               200, 200, 200, 200, 403),
    ("GET", "/api/v1/loglevels",                       403, 200, 200, 200, 403),
    ("POST", "/api/v1/loglevels",                      403, 403, 201, 201, 403),
    ("GET", "/api/v1/loglevels/role-matrix",           200, 200, 200, 200, 403),
    ("GET", "/debug/loggers",                          403, 403, 403, 200, 403),
    ("GET", "/debug/state",                            403, 403, 403, 200, 403),
    ("GET", "/api/v1/runbooks",                        403, 200, 200, 200, 403),
    ("POST", "/api/v1/runbooks/validate",              403, 200, 200, 200, 403),
    ("POST", "/api/v1/runbooks/reload",                403, 403, 403, 200, 403),
    ("POST", "/api/v1/runbooks",                       403, 403, 403, 201, 403),
    ("GET", "/api/v1/runs",                            403, 200, 200, 200, 403),
    ("POST", "/api/v1/runs",                           403, 403, 202, 202, 403),
]
BODIES = {(method, path): body for method, path, body, _needed in ENDPOINT_CLASSES}
LEAST = {(method, path): needed for method, path, _body, needed in ENDPOINT_CLASSES}
ROLES = ("client", "viewer", "operator", "admin", "hook")
ROLE_CASES = [pytest.param(method, path, role, statuses[i], id=f"{method} {path} as {role}")
              for method, path, *statuses in ROLE_MATRIX for i, role in enumerate(ROLES)]


def test_the_role_matrix_covers_every_endpoint_class_and_every_role():
    assert {(m, p) for m, p, *_ in ROLE_MATRIX} == set(BODIES), "write a ROLE_MATRIX row for each ENDPOINT_CLASSES row"
    assert set(ROLES) == {role.value for role in Role}


@pytest.mark.parametrize(("method", "path"), list(BODIES))
def test_no_token_is_401_everywhere(base_url, method, path):
    with http(base_url) as client:
        unauthenticated = client.request(method, path, json=BODIES[(method, path)])
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "role", "status"), ROLE_CASES)
def test_role_matrix(base_url, make_token, method, path, role, status):
    token = make_token(Role(role))
    body = BODIES[(method, path)]
    # Only a token needs a fresh name; other bodies refuse unknown fields.
    payload = dict(body, name=f"made-by-{token[-8:]}") if body and path == "/api/v1/tokens" else body
    with http(base_url, token) as client:
        response = client.request(method, path, json=payload)
    assert response.status_code == status, response.text
    if status == 403:
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        # A hook token is refused everywhere but /hooks/*, saying so; the others are told the role needed.
        assert ("hook role" if role == "hook" else LEAST[(method, path)].value) in error["message"]


def test_token_is_stored_only_as_its_hash(base_url, admin_token, engine: Engine):
    with http(base_url, admin_token) as client:
        created = client.post("/api/v1/tokens", json={"name": "ci-bot", "role": "operator"})
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    assert secret.startswith("rbd_")
    with session_scope(engine) as session:
        row = session.exec(select(ApiToken).where(ApiToken.name == "ci-bot")).one()
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in str(row.model_dump())
    with http(base_url, admin_token) as client:
        listed = client.get("/api/v1/tokens").json()
    assert all("token" not in t and "token_hash" not in t for t in listed)


def test_revoked_and_expired_tokens_are_refused_with_the_reason(base_url, admin_token, make_token, engine):
    doomed = make_token(Role.viewer, name="doomed")
    with http(base_url, doomed) as client:
        assert client.get("/api/v1/audit").status_code == 200
    with http(base_url, admin_token) as client:
        assert client.delete("/api/v1/tokens/doomed").json()["revoked_at"] is not None
    with http(base_url, doomed) as client:
        refused = client.get("/api/v1/audit")
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]

    stale = make_token(Role.viewer, name="stale")
    with session_scope(engine) as session:
        session.exec(update(ApiToken).where(ApiToken.name == "stale")  # type: ignore[call-overload]
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    with http(base_url, stale) as client:
        refused = client.get("/api/v1/audit")
    assert refused.status_code == 401
    assert "expired" in refused.json()["error"]["message"]


@pytest.mark.parametrize("header", ["Bearer", "Basic dXNlcjpwYXNz", "Bearer rbd_not-a-real-token", "Token abc"])
def test_malformed_or_forged_authorization_is_401(base_url, header):
    with http(base_url) as client:
        response = client.get("/api/v1/audit", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


def test_duplicate_token_name_is_409_and_nothing_is_written(base_url, admin_token):
    with http(base_url, admin_token) as client:
        assert client.post("/api/v1/tokens", json={"name": "twice", "role": "viewer"}).status_code == 201
        before = client.get("/api/v1/audit", params={"action": "token.create", "limit": 500}).json()["items"]
        again = client.post("/api/v1/tokens", json={"name": "twice", "role": "admin"})
        after = client.get("/api/v1/audit", params={"action": "token.create", "limit": 500}).json()["items"]
    assert again.status_code == 409
    assert "twice" in again.json()["error"]["message"]
    assert len(after) == len(before)


def test_unknown_token_ref_is_404(base_url, admin_token):
    with http(base_url, admin_token) as client:
        response = client.delete("/api/v1/tokens/no-such-token")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
