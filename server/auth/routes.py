from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import service
from server.auth.models import TokenCreate, TokenCreated, TokenPublic
from server.auth.token_cache import announce_revocation
from server.db import SessionDep
from server.deps import Admin, RedisDep, SettingsDep, token_cache_of

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, actor: Admin) -> TokenCreated:
    token, raw = service.create_token(session, name=body.name, role=body.role, actor=actor,
                                      expires_in_days=body.expires_in_days)
    session.commit()
    return TokenCreated(**TokenPublic.model_validate(token, from_attributes=True).model_dump(), token=raw)


@router.get("", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, _actor: Admin, include_revoked: bool = False) -> list[TokenPublic]:
    return [TokenPublic.model_validate(t, from_attributes=True)
            for t in service.list_tokens(session, include_revoked=include_revoked)]


@router.delete("/{ref}", response_model=TokenPublic)
def revoke_token(ref: str, request: Request, settings: SettingsDep, client: RedisDep, session: SessionDep,
                 actor: Admin) -> TokenPublic:
    token = service.revoke_token(session, ref=ref, actor=actor)
    announce_revocation(session, settings, client, token.token_hash, cache=token_cache_of(request))
    session.commit()
    return TokenPublic.model_validate(token, from_attributes=True)
