"""GET /debug/state: admin only, every section present, secrets never shown."""

from __future__ import annotations

import pytest

from server.auth.models import Role
from server.debug.service import config_summary
from server.redaction import MASK
from server.settings import Settings
from tests.support import http


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
    cache = state["flags_cache"]
    assert cache["available"] is False or {"generation", "hits"} <= set(cache)
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
