"""The environment a step's child process gets: a minimal one, never the worker's own.

A worker's environment holds its database and Redis URLs, RUNBOOKD_* settings and secrets (the Slack
signing secret, say). A step that inherited it would let anyone who may start a run read them through
`printenv`. So a child gets PATH, LANG and HOME (plus the names in `step_env_passthrough`), then what the
runbook's `env:` gives it, and never a name or value the settings say is the server's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pydantic import SecretStr

from server.settings import Settings

# Names a child never gets from the worker, whatever step_env_passthrough says.
NEVER = re.compile(r"^(RUNBOOKD_|CELERY_|DATABASE_URL$|REDIS_URL$|PG[A-Z]+$|POSTGRES_)", re.I)
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|CREDENTIAL|PRIVATE_KEY)", re.I)


def server_secret_values(settings: Settings) -> set[str]:
    """Values of the settings that are the server's own secrets: SecretStr fields, database and Redis URLs."""
    values = {settings.effective_database_url, settings.redis_url or ""}
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            values.add(value.get_secret_value())
    return {v for v in values if v and len(v) >= 4}


def step_environment(settings: Settings, extra: Mapping[str, str] | None = None,
                     source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the allowed names from the worker's, then the runbook's `env:`."""
    source = os.environ if source is None else source
    secrets = server_secret_values(settings)
    env = {name: source[name] for name in settings.step_env_passthrough
           if name in source and not NEVER.match(name) and not SECRET_NAME.search(name)
           and source[name] not in secrets}
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    return env
