"""Two api processes on one database and Redis: a change through one is evaluated by the other within 1 s,
and a lost change notice is caught up by the generation check."""

from __future__ import annotations

import time

import pytest

from server.app import create_app
from server.db import session_scope
from server.flags import service
from server.flags.cache import generation_key
from server.flags.models import FlagUpdate
from server.redis_client import make_redis
from tests.conftest import TEST_ACTOR
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http, serve


@pytest.fixture(scope="module")
def two_apis(settings):
    with serve(create_app(settings)) as first, serve(create_app(settings)) as second:
        yield first, second


def _value(client, key):
    response = client.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"targetingKey": "u"}})
    return response.json().get("value") if response.status_code == 200 else response.json()["errorCode"]


def _time_until(predicate, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not seen within {timeout}s")


def test_change_through_one_api_is_seen_by_the_other_within_a_second(two_apis, operator_token, client_token):
    first, second = two_apis
    key = new_key()
    with http(first, operator_token) as writer, http(second, client_token) as reader:
        assert _value(reader, key) == "FLAG_NOT_FOUND"
        assert writer.post("/api/v1/flags", json=flag_body(key, enabled=True)).status_code == 201
        assert _time_until(lambda: _value(reader, key) is False) < 1.0
        for default in ("on", "off", "on"):
            assert writer.patch(f"/api/v1/flags/{key}", json={"default_variant": default}).status_code == 200
            assert _time_until(lambda d=default: _value(reader, key) is (d == "on")) < 1.0
        writer.delete(f"/api/v1/flags/{key}")
        assert _time_until(lambda: _value(reader, key) == "FLAG_NOT_FOUND") < 1.0


def test_a_lost_notice_is_caught_up_by_the_generation_check(two_apis, settings, engine, operator_token,
                                                            client_token):
    first, second = two_apis
    key = new_key()
    with http(first, operator_token) as writer:
        assert writer.post("/api/v1/flags", json=flag_body(key, enabled=True)).status_code == 201
    with http(second, client_token) as reader:
        _time_until(lambda: _value(reader, key) is False)
        # A change whose notice never went out: the database changed and the counter moved, no PUBLISH.
        with session_scope(engine) as session:
            service.update_flag(session, key=key, changes=FlagUpdate(default_variant="on"), actor=TEST_ACTOR)
        client = make_redis(settings)
        try:
            client.incr(generation_key(settings))
        finally:
            client.close()
        waited = _time_until(lambda: _value(reader, key) is True)
    assert waited < settings.flag_cache_check_seconds + 1.0
