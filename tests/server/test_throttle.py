"""Issue 15, finding 7: repeated bad tokens are throttled, and a token holds a bounded number of event streams."""

from __future__ import annotations

import contextlib

import httpx

from server.app import create_app
from server.auth.models import Role
from tests.support import serve, wait_for


def _opens(client: httpx.Client, path: str) -> bool:
    with client.stream("GET", path) as response:
        return response.status_code == 200


def test_repeated_bad_tokens_get_429_even_for_a_good_token_then(settings, make_token):
    good = make_token(Role.viewer)
    with serve(create_app(settings.model_copy(update={"auth_fail_limit": 5}))) as url, \
            httpx.Client(base_url=url) as client:
        for n in range(5):
            bad = client.get("/api/v1/runs", headers={"Authorization": f"Bearer rbd_guess{n}"})
            assert bad.status_code == 401
        throttled = client.get("/api/v1/runs", headers={"Authorization": "Bearer rbd_guess-more"})
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
        assert throttled.json()["error"]["code"] == "too_many_requests"
        assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {good}"}).status_code == 429


def test_a_token_holds_at_most_the_configured_number_of_event_streams(settings, make_token):
    token = make_token(Role.operator)
    headers = {"Authorization": f"Bearer {token}"}
    path = "/api/v1/loglevels/stream-cap-svc/events"
    with serve(create_app(settings.model_copy(update={"max_streams_per_token": 2}))) as url, \
            httpx.Client(base_url=url, headers=headers, timeout=10) as client, contextlib.ExitStack() as streams:
        first = streams.enter_context(client.stream("GET", path))
        second = streams.enter_context(client.stream("GET", path))
        assert first.status_code == 200 and second.status_code == 200
        third = client.get(path)
        assert third.status_code == 429 and "event streams" in third.json()["error"]["message"]
        first.close()  # the client goes: its slot comes back
        wait_for(lambda: _opens(client, path), 10, "the closed stream's slot to come back")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {make_token(Role.operator)}"},
                          timeout=10) as other, other.stream("GET", path) as theirs:
            assert theirs.status_code == 200  # the cap is per token
