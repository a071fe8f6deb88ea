"""Create, list, revoke and check API tokens. Only a token's SHA-256 hash is ever stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor, ApiToken, Role, TokenPublic
from server.errors import Conflict, NotFound, Unauthorized
from server.ids import MAX_ID, is_id
from server.models_base import as_utc, utcnow

TOKEN_PREFIX = "rbd_"  # noqa: S105 (a marker that makes leaked tokens easy to grep for, not a secret)
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _public(token: ApiToken) -> dict[str, object]:
    return TokenPublic.model_validate(token, from_attributes=True).model_dump(mode="json")


def create_token(
    session: Session, *, name: str, role: Role, actor: Actor, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Make a token; the plaintext is returned once and never stored."""
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first():
        raise Conflict(f"a token named {name!r} already exists; pick another name or revoke it first")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(raw),
        prefix=raw[: len(TOKEN_PREFIX) + 4],
        created_by=actor.name,
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(token)
    session.flush()
    audit.record(session, actor=actor, action="token.create", target_type="token", target_id=token.id,
                 after=_public(token))
    return token, raw


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[ApiToken]:
    """All tokens, oldest first."""
    stmt = select(ApiToken).order_by(col(ApiToken.id))
    if not include_revoked:
        stmt = stmt.where(col(ApiToken.revoked_at).is_(None))
    return list(session.exec(stmt))


def find_token(session: Session, *, ref: str | int) -> ApiToken:
    """A token by id or by name."""
    token = None
    if (isinstance(ref, int) and 0 <= ref <= MAX_ID) or (isinstance(ref, str) and is_id(ref)):
        token = session.get(ApiToken, int(ref))
    if token is None:
        token = session.exec(select(ApiToken).where(ApiToken.name == str(ref))).first()
    if token is None:
        raise NotFound(f"no token with id or name {ref!r}")
    return token


def revoke_token(session: Session, *, ref: str | int, actor: Actor) -> ApiToken:
    """Revoke a token; revoking twice is harmless and audited once."""
    token = find_token(session, ref=ref)
    if token.revoked_at is not None:
        return token
    before = _public(token)
    token.revoked_at = utcnow()
    session.add(token)
    session.flush()
    audit.record(session, actor=actor, action="token.revoke", target_type="token", target_id=token.id,
                 before=before, after=_public(token))
    return token


def authenticate(session: Session, *, raw: str) -> ApiToken:
    """The live token for a presented secret, or Unauthorized saying why."""
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(raw))).first()
    if token is None:
        raise Unauthorized("invalid API token")
    now = utcnow()
    if token.revoked_at is not None:
        raise Unauthorized(f"API token {token.name!r} was revoked")
    if token.expires_at is not None and as_utc(token.expires_at) <= now:
        raise Unauthorized(f"API token {token.name!r} expired at {as_utc(token.expires_at).isoformat()}")
    if token.last_used_at is None or now - as_utc(token.last_used_at) > LAST_USED_RESOLUTION:
        token.last_used_at = now
        session.add(token)
        session.commit()
    return token


def has_any_token(session: Session) -> bool:
    return session.exec(select(ApiToken.id).limit(1)).first() is not None
