"""GET /debug/state: admin only, every section present, secrets never shown."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlmodel import select

from server.app import create_app
from server.auth.models import Role
from server.db import session_scope
from server.debug.service import config_summary
from server.redaction import MASK
from server.settings import Settings
from tests.support import http, serve, wait_for


@pytest.mark.parametrize("role", [Role.client, Role.viewer, Role.operator])
def test_only_admins_see_it(base_url, make_token, role):
    with http(base_url, make_token(role)) as client:
        assert client.get("/debug/state").status_code == 403


def test_sections_and_redaction(base_url, admin_token, settings):
    with http(base_url, admin_token) as client:
        state = client.get("/debug/state").json()
    assert state["redis_error"] is None
    assert settings.default_queue in state["queues"] and isinstance(state["queues"][settings.default_queue], int)
    assert isinstance(state["workers"], list)
    assert set(state["beat"]) == {"last_heartbeat", "seconds_since_heartbeat"}
    assert state["database"]["dialect"] in {"sqlite", "postgresql"} and "checkedout" in state["database"]
    assert state["process"]["pid"] == os.getpid()  # the api under test runs in this process
    config = state["config"]
    assert config["redis_prefix"] == settings.redis_prefix
    assert config["loglevel_max_duration"] == "4h"
    assert admin_token not in str(state)


def test_config_summary_masks_passwords_and_secrets():
    settings = Settings(database_url="postgresql+psycopg://runbookd:hunter2@db:5432/runbookd",
                        redis_url="redis://:s3cret@redis:6379/0", slack_signing_secret="slack-signing",
                        mattermost_token="mm-token")
    summary = config_summary(settings)
    text = str(summary)
    for secret in ("hunter2", "s3cret", "slack-signing", "mm-token"):
        assert secret not in text
    assert summary["database_url"] == f"postgresql+psycopg://runbookd:{MASK}@db:5432/runbookd"
    assert summary["redis_url"] == f"redis://:{MASK}@redis:6379/0"
    assert summary["slack_signing_secret"] == MASK and summary["mattermost_token"] == MASK


def test_the_flag_cache_section_shows_its_real_figures(settings, engine, make_token):
    """A fresh api (its own cache, counters at zero): evaluations are counted, the flags and generation are
    those of the database and Redis, and a change moves them on."""
    from server.flags.cache import generation_key
    from server.flags.models import Flag
    from server.redis_client import make_redis

    admin = make_token(Role.admin)
    key = f"debug-state-{uuid.uuid4().hex[:8]}"
    redis = make_redis(settings)

    def live_flags() -> int:
        with session_scope(engine) as session:
            return len(session.exec(select(Flag).where(Flag.deleted == False)).all())  # noqa: E712

    def generation() -> int:
        return int(redis.get(generation_key(settings)) or 0)

    with serve(create_app(settings)) as url, http(url, admin) as client:
        created = client.post("/api/v1/flags", json={"key": key, "type": "boolean", "variants": {"on": True,
                                                     "off": False}, "default_variant": "off"})
        assert created.status_code == 201, created.text

        def cache() -> dict:
            return client.get("/debug/state").json()["flags_cache"]

        wait_for(lambda: cache()["generation"] == generation(), 5, "the cache to reach Redis's generation")
        before = cache()
        for _ in range(3):
            assert client.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {}}).status_code == 200
        after = cache()
        assert after["available"] is True
        assert after["hits"] - before["hits"] == 3 and after["misses"] == before["misses"]
        assert after["flags"] == live_flags() and key in str(client.get(f"/api/v1/flags/{key}").json())
        assert after["last_refresh"] is not None and len(after["config_digest"]) == 16

        changed = client.patch(f"/api/v1/flags/{key}", json={"description": "moved on", "reason": "debug state"})
        assert changed.status_code == 200, changed.text
        wait_for(lambda: cache()["generation"] == generation() > after["generation"], 5,
                 "the cache to hear of the change")
        assert cache()["config_digest"] != after["config_digest"]
    redis.close()
