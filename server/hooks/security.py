"""Who may deliver to /hooks/generic/NAME: a request signed with NAME's secret, as Slack signs (slack_sdk's
v0 HMAC-SHA256 over `v0:TIMESTAMP:BODY`), within the replay window and never twice; or a hook-role token."""

from __future__ import annotations

import hashlib
import logging

import redis
from slack_sdk.signature import SignatureVerifier

from server.errors import Unauthorized
from server.redis_client import key
from server.settings import Settings
from server.signing import signature_problem

log = logging.getLogger("runbookd.hooks")
SIGNATURE_HEADER = "x-runbookd-signature"
TIMESTAMP_HEADER = "x-runbookd-timestamp"


def _reject(name: str, why: str, remote: str | None) -> Unauthorized:
    log.warning("hook delivery refused", extra={"hook": name, "why": why, "remote": remote})
    return Unauthorized(f"delivery to hook {name!r} refused: {why}")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Runbookd-Signature value for a body sent at timestamp (what a sender computes)."""
    return str(SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body))


def verify_signature(settings: Settings, client: redis.Redis | None, *, name: str, body: bytes,
                     timestamp: str | None, signature: str | None, remote: str | None,
                     now: float | None = None) -> None:
    secret = settings.hook_secrets.get(name)
    if secret is None:
        raise _reject(name, "no such hook; an admin names it in RUNBOOKD_HOOK_SECRETS", remote)
    if not timestamp or not signature:
        raise _reject(name, "send both X-Runbookd-Timestamp and X-Runbookd-Signature", remote)
    window = settings.hook_signature_max_age
    problem = signature_problem(secret.get_secret_value(), body=body, timestamp=timestamp, signature=signature,
                                max_age=window, now=now)
    if problem == "stale":
        raise _reject(name, f"timestamp is more than {window}s away (stale or replayed)", remote)
    if problem == "mismatch":
        raise _reject(name, "signature does not match", remote)
    if client is None:
        return  # without Redis a replay is still harmless: its firing keys exist, so it starts nothing again
    digest = hashlib.sha256(signature.encode()).hexdigest()
    try:
        fresh = client.set(key(settings, "hooks", "seen", digest), "1", nx=True, ex=window * 2 + 60)
    except redis.RedisError as exc:
        log.warning("hook replay check skipped: Redis unavailable", extra={"hook": name, "error": str(exc)})
        return
    if not fresh:
        raise _reject(name, "this exact request was already received (replay)", remote)
