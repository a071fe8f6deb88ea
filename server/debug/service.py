"""What /debug/state reports: queues, live workers, the database pool, caches and the configuration."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from server.redaction import MASK, is_secret_key, redact
from server.redis_client import key
from server.settings import Settings

WORKER_HEARTBEAT_SECONDS = 5.0
WORKER_HEARTBEAT_TTL = 30  # a worker silent this long is gone from /debug/state
_KOMBU_SEP = "\x06\x16"  # kombu's Redis transport joins binding fields and priority suffixes with this
_PRIORITY_SUFFIXES = ("", *(f"{_KOMBU_SEP}{p}" for p in (3, 6, 9)))


def write_worker_heartbeat(client: redis.Redis, settings: Settings, *, hostname: str, pid: int,
                           queues: list[str], started_at: float) -> None:
    """A worker's sign of life, kept in Redis with a TTL so dead workers drop out by themselves."""
    value = json.dumps({"hostname": hostname, "pid": pid, "queues": queues, "started_at": started_at,
                        "last_heartbeat": time.time()})
    client.set(key(settings, "worker", hostname), value, ex=WORKER_HEARTBEAT_TTL)


def live_workers(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Workers that wrote a heartbeat within WORKER_HEARTBEAT_TTL, with its age in seconds."""
    now = time.time()
    workers = []
    for name in sorted(client.scan_iter(match=key(settings, "worker", "*"), count=500)):
        raw = client.get(name)
        if raw is None:
            continue
        info = json.loads(raw)
        info["seconds_since_heartbeat"] = round(now - info["last_heartbeat"], 3)
        workers.append(info)
    return workers


def queue_names(client: redis.Redis, settings: Settings) -> set[str]:
    """The default queue plus every queue kombu has bound under our prefix (workers declare theirs)."""
    names = {settings.default_queue}
    for binding in client.scan_iter(match=key(settings, "_kombu.binding.*"), count=500):
        for member in client.smembers(binding):
            text = member.decode() if isinstance(member, bytes) else str(member)
            names.add(text.split(_KOMBU_SEP)[-1])
    return {n for n in names if n and not n.endswith(".pidbox") and "celeryev" not in n}


def queue_depths(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Messages waiting in each Celery queue (all priority lists summed)."""
    depths = {}
    for name in sorted(queue_names(client, settings)):
        depths[name] = sum(int(client.llen(key(settings, name + suffix))) for suffix in _PRIORITY_SUFFIXES)
    return depths


def beat_status(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    raw = client.get(key(settings, "beat", "last"))
    if raw is None:
        return {"last_heartbeat": None, "seconds_since_heartbeat": None}
    last = float(raw)
    return {"last_heartbeat": last, "seconds_since_heartbeat": round(time.time() - last, 3)}


def pool_status(engine: Engine) -> dict[str, Any]:
    """Connections of this process's pool: how many exist, are lent out and overflow."""
    pool = engine.pool
    status: dict[str, Any] = {"dialect": engine.dialect.name, "pool": type(pool).__name__, "status": pool.status()}
    for name in ("size", "checkedin", "checkedout", "overflow"):
        method = getattr(pool, name, None)
        if callable(method):
            status[name] = method()
    return status


def _hide_query_secrets(url: str) -> str:
    """?password=...&sslkey=... : mask the values of secret-looking query parameters too."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = [(k, MASK if is_secret_key(k) or k.lower() in ("pass", "pwd", "key", "sslpassword") else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="*")))


def _hide_url_password(url: str | None) -> str | None:
    if not url:
        return url
    return _hide_query_secrets(_hide_userinfo(url))


def _hide_userinfo(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True).replace("***", MASK)
    except Exception:  # not an SQLAlchemy-shaped URL (e.g. redis://): mask everything between :// and @
        scheme, sep, rest = url.partition("://")
        _credentials, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{MASK}{at}{host}" if at else url


def config_summary(settings: Settings) -> dict[str, Any]:
    """Every setting, with secrets, passwords inside URLs and token-like values masked."""
    values = settings.model_dump(mode="json")
    for name, field in type(settings).model_fields.items():
        if "SecretStr" in str(field.annotation) and values.get(name) is not None:
            values[name] = MASK
    values["database_url"] = _hide_url_password(settings.effective_database_url)
    values["redis_url"] = _hide_url_password(settings.redis_url)
    return dict(redact(values))
