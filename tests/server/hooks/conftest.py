"""A live api whose runbooks directory is the test's own, with a generic hook secret, and helpers that speak
Alertmanager's webhook (version 4) and sign generic deliveries as a sender would."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from server.app import create_app
from server.auth.models import Role
from server.hooks.security import sign
from tests.conftest import subprocess_env
from tests.support import celery_worker, serve

GENERIC_SECRET = "generic-hook-secret-1"
PROBE = """\
title: Probe
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
  instance: {type: string, default: unknown}
  count: {type: integer, default: 1, maximum: 100}
steps:
  - id: say
    uses: log
    with: {message: "probe {{ params.service }} on {{ params.instance }}"}
"""


@pytest.fixture(scope="module")
def hooks_dir(tmp_path_factory, database_url) -> Path:  # one per database backend
    directory = tmp_path_factory.mktemp("hook-runbooks")
    (directory / "probe.yaml").write_text(PROBE)
    return directory


@pytest.fixture(scope="module")
def hook_settings(settings, hooks_dir):
    # A queue of our own: workers of other test modules must not take these runs.
    return settings.model_copy(update={"runbooks_dir": hooks_dir, "hook_secrets": {"ci": SecretStr(GENERIC_SECRET)},
                                       "default_queue": f"rbtest-hooks-{uuid.uuid4().hex[:6]}",
                                       "hook_max_body_bytes": 2 * 1024 * 1024,
                                       "max_body_bytes": 4 * 1024 * 1024})


@pytest.fixture(scope="module")
def hook_url(hook_settings):
    with serve(create_app(hook_settings)) as url:
        yield url


@pytest.fixture(scope="module")
def hooks_worker(hook_settings, tmp_path_factory):
    """A real worker process on the hooks' queue, for the tests that need runs to finish."""
    log_path = tmp_path_factory.mktemp("hooks-worker") / "worker.log"
    env = subprocess_env(hook_settings, RUNBOOKD_DEFAULT_QUEUE=hook_settings.default_queue,
                         RUNBOOKD_RUNBOOKS_DIR=str(hook_settings.runbooks_dir))
    with celery_worker(env, log_path, name="hooks", queues=hook_settings.default_queue):
        yield log_path


@pytest.fixture(scope="module")
def hook_token(make_token) -> str:
    return make_token(Role.hook)


def unique(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_rules(directory: Path, text: str) -> Path:
    path = directory / f"{unique('t')}.triggers.yaml"
    path.write_text(text)
    return path


def alert(alertname: str, *, status: str = "firing", starts_at: str = "2026-12-02T00:00:00Z",
          fingerprint: str | None = None, **labels: str) -> dict:
    all_labels = {"alertname": alertname, **labels}
    return {"status": status, "labels": all_labels, "annotations": {"summary": f"{alertname} is firing"},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else starts_at,
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint or uuid.uuid4().hex[:16]}


def payload(alerts: list[dict], *, group_key: str | None = None, status: str = "firing") -> dict:
    return {"version": "4", "groupKey": group_key or f"{{}}:{{alertname=\"{uuid.uuid4().hex[:6]}\"}}",
            "truncatedAlerts": 0, "status": status, "receiver": "runbookd", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": alerts}


@dataclass
class Hooks:
    url: str
    token: str

    def alertmanager(self, body: dict | bytes, token: str | None = "default", **kw) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        tok = self.token if token == "default" else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.post(f"{self.url}/hooks/alertmanager", content=content, headers=headers, timeout=60, **kw)

    def generic(self, name: str, body: dict | bytes, *, secret: str = GENERIC_SECRET, timestamp: int | None = None,
                signature: str | None = None, headers: dict | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        ts = str(timestamp if timestamp is not None else int(time.time()))
        sent = {"Content-Type": "application/json", "X-Runbookd-Timestamp": ts,
                "X-Runbookd-Signature": signature or sign(secret, ts, content), **(headers or {})}
        return httpx.post(f"{self.url}/hooks/generic/{name}", content=content, headers=sent, timeout=60)


@pytest.fixture(scope="module")
def hooks(hook_url, hook_token) -> Hooks:
    return Hooks(hook_url, hook_token)
