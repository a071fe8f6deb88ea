"""Issue 15, finding 7: /debug/state masks passwords given in a URL's query, not only in its user part."""

from __future__ import annotations

import json

from server.debug.service import config_summary
from server.settings import Settings


def test_a_password_in_a_urls_query_is_masked():
    settings = Settings(database_url="postgresql+psycopg://app@db:5432/runbookd?password=hunter2&sslmode=require",
                        redis_url="redis://:inline-pw@redis:6379/0?password=redis-pw")
    shown = json.dumps(config_summary(settings))
    assert "hunter2" not in shown and "redis-pw" not in shown and "inline-pw" not in shown
    assert "sslmode=require" in shown  # only secret-looking parameters are masked
