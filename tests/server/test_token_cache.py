"""The evaluation path's token cache: no database per request, and revocation takes effect within its TTL."""

from __future__ import annotations

import time
import uuid

from server.app import create_app
from server.auth.models import Role
from tests.support import http, serve

TTL = 2.0


def test_revoked_token_stops_evaluating_within_the_ttl(settings, make_token, admin_token):
    name = f"ttl-{uuid.uuid4().hex[:8]}"
    token = make_token(Role.client, name=name)
    with serve(create_app(settings.model_copy(update={"auth_cache_seconds": TTL}))) as url:
        with http(url, token) as client:
            assert client.post("/ofrep/v1/evaluate/flags", json={}).status_code == 200
            cached_at = time.monotonic()
        with http(url, admin_token) as admin:
            assert admin.delete(f"/api/v1/tokens/{name}").status_code == 200
        with http(url, token) as client:
            # The management API checks the database every time; evaluation trusts its cache for the TTL.
            assert client.get("/api/v1/flags").status_code == 401
            assert client.post("/ofrep/v1/evaluate/flags", json={}).status_code == 200
            while client.post("/ofrep/v1/evaluate/flags", json={}).status_code == 200:
                assert time.monotonic() - cached_at < TTL + 0.5, "still evaluating after the TTL"
                time.sleep(0.05)
            refused = client.post("/ofrep/v1/evaluate/flags", json={})
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
