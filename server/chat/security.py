"""Who may talk to runbookd from chat: request verification and the chat identity -> role mapping."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

import redis

from server.auth.models import Actor, Role, Source
from server.errors import DomainError, Forbidden, Unauthorized
from server.redis_client import key
from server.settings import Settings
from server.signing import signature_problem

log = logging.getLogger(__name__)
SLACK_MAX_AGE_S = 5 * 60  # Slack's own replay window


class ChatNotConfigured(DomainError):
    status_code = 503
    code = "chat_not_configured"


@dataclass(frozen=True)
class ChatUser:
    platform: str   # slack or mattermost
    team: str
    user: str
    channel: str

    @property
    def identity(self) -> str:
        return f"{self.platform}:{self.team}/{self.user}"

    @property
    def channel_ref(self) -> str:
        return f"{self.platform}:{self.team}/{self.channel}"


def _reject(platform: str, why: str, remote: str | None) -> Unauthorized:
    # Logged without the body: it may carry a token or a forged payload meant for someone's logs.
    log.warning("chat request refused", extra={"platform": platform, "why": why, "remote": remote})
    return Unauthorized(f"{platform} request refused: {why}")


def verify_slack(settings: Settings, client: redis.Redis, *, body: bytes, timestamp: str | None,
                 signature: str | None, remote: str | None, now: float | None = None) -> None:
    """Check Slack's v0 signature and timestamp with slack_sdk, then refuse a replay of a seen signature."""
    if settings.slack_signing_secret is None:
        raise ChatNotConfigured("Slack is not configured: set RUNBOOKD_SLACK_SIGNING_SECRET")
    if not timestamp or not signature:
        raise _reject("slack", "missing X-Slack-Request-Timestamp or X-Slack-Signature", remote)
    problem = signature_problem(settings.slack_signing_secret.get_secret_value(), body=body, timestamp=timestamp,
                                signature=signature, max_age=SLACK_MAX_AGE_S, now=now)
    if problem == "stale":
        raise _reject("slack", "timestamp is more than 5 minutes away (stale or replayed)", remote)
    if problem == "mismatch":
        raise _reject("slack", "signature does not match", remote)
    _refuse_replay(settings, client, "slack", signature, remote)


def verify_mattermost(settings: Settings, *, token: str | None, remote: str | None) -> None:
    """Mattermost signs nothing; it sends the slash command's token, compared in constant time."""
    if settings.mattermost_token is None:
        raise ChatNotConfigured("Mattermost is not configured: set RUNBOOKD_MATTERMOST_TOKEN")
    if not token or not hmac.compare_digest(token.encode(), settings.mattermost_token.get_secret_value().encode()):
        raise _reject("mattermost", "command token does not match", remote)


def _refuse_replay(settings: Settings, client: redis.Redis, platform: str, signature: str,
                   remote: str | None) -> None:
    digest = hashlib.sha256(signature.encode()).hexdigest()
    fresh = client.set(key(settings, "chat", "seen", digest), "1", nx=True, ex=SLACK_MAX_AGE_S + 60)
    if not fresh:
        raise _reject(platform, "this exact request was already received (replay)", remote)


def authorize(settings: Settings, user: ChatUser) -> Actor:
    """The actor for a chat user: the higher of their own and their channel's role; allowlist first."""
    allow = settings.chat_channel_allowlist
    if allow and user.channel_ref not in allow:
        raise Forbidden(f"commands are not accepted from channel {user.channel_ref}; ask an admin to add it to "
                        "RUNBOOKD_CHAT_CHANNEL_ALLOWLIST")
    roles = [r for r in (settings.chat_users.get(user.identity), settings.chat_channels.get(user.channel_ref)) if r]
    if roles:
        role = max(roles, key=lambda r: r.rank)
    elif settings.chat_unmapped == "viewer":
        role = Role.viewer
    else:
        raise Forbidden(f"{user.identity} is not mapped to a role; ask an admin to add it to RUNBOOKD_CHAT_USERS")
    return Actor(name=user.identity, role=role, source=Source.chat)
