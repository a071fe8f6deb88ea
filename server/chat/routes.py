"""Chat endpoints: Slack slash commands and buttons, Mattermost slash commands. No bot process, no cloud.

Forged, unsigned, stale and replayed requests get 401 and do nothing. Everything else is answered with a
chat message (HTTP 200), mistakes included, because chat clients show any other status as a bare failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.chat import grammar as g
from server.chat.dispatch import ChatContext, execute
from server.chat.replies import Reply
from server.chat.security import ChatNotConfigured, ChatUser, authorize, verify_mattermost, verify_slack
from server.deps import EngineDep, RedisDep, SettingsDep
from server.errors import DomainError, InvalidInput
from server.runbooks import service as runbooks
from server.settings import Settings

router = APIRouter(prefix="/chat", tags=["chat"])
log = logging.getLogger(__name__)


def _form(body: bytes) -> dict[str, str]:
    try:
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise InvalidInput("the body is not UTF-8 form data") from None


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@dataclass(frozen=True)
class _Parts:
    """What answering a chat request needs of the process."""

    settings: Settings
    client: redis.Redis | None
    engine: Engine


async def _parts(settings: SettingsDep, client: RedisDep, engine: EngineDep) -> _Parts:
    return _Parts(settings, client, engine)


Parts = Annotated[_Parts, Depends(_parts)]


def _answer(parts: _Parts, user: ChatUser, command: g.Command | str, response_url: str | None) -> dict[str, Any]:
    """Parse, authorise, execute and commit (then enqueue), turning every expected failure into a chat reply."""
    settings, engine = parts.settings, parts.engine
    with Session(engine, expire_on_commit=False) as session:
        try:
            if isinstance(command, str):
                command = g.parse(command)
            actor = authorize(settings, user)
            ctx = ChatContext(session=session, settings=settings,
                              runbooks=runbooks.store_for(settings.runbooks_dir), actor=actor, user=user,
                              response_url=response_url, redis=parts.client)
            reply = execute(command, ctx)
            session.commit()
        except g.UsageError as exc:
            session.rollback()
            usage = f"\nUsage: `/{settings.chat_command} {exc.usage}`" if exc.usage else ""
            return Reply(f":warning: {exc.problem}{usage}").body()
        except DomainError as exc:
            session.rollback()
            return Reply(f":warning: {exc.message}").body()
    return reply.body()


async def _verified_slack_form(request: Request, parts: _Parts) -> dict[str, str]:
    body = await request.body()
    if parts.client is None:
        raise ChatNotConfigured("Slack needs Redis to refuse replayed requests: set RUNBOOKD_REDIS_URL")
    verify_slack(parts.settings, parts.client, body=body,
                 timestamp=request.headers.get("x-slack-request-timestamp"),
                 signature=request.headers.get("x-slack-signature"), remote=_remote(request))
    return _form(body)


@router.post("/slack/commands")
async def slack_command(request: Request, parts: Parts) -> JSONResponse:
    form = await _verified_slack_form(request, parts)
    user = ChatUser("slack", form.get("team_id", ""), form.get("user_id", ""), form.get("channel_id", ""))
    reply = await run_in_threadpool(_answer, parts, user, form.get("text", ""), form.get("response_url"))
    return JSONResponse(reply)


@router.post("/slack/actions")
async def slack_action(request: Request, parts: Parts) -> JSONResponse:
    """Approve / Reject buttons on steps waiting for approval."""
    form = await _verified_slack_form(request, parts)
    try:
        payload = orjson.loads(form.get("payload", ""))
        action = payload["actions"][0]
        run_id, step_id = action["value"].split(":", 1)
        user = ChatUser("slack", payload.get("team", {}).get("id") or payload["user"].get("team_id", ""),
                        payload["user"]["id"], (payload.get("channel") or {}).get("id", ""))
        approve = action["action_id"] == "approve"
        command: g.Command = g.ApprovalCommand(int(run_id), step_id, approve,
                                               None if approve else "rejected with the Slack button")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a Slack block_actions payload runbookd sent: {type(exc).__name__}") from None
    reply = await run_in_threadpool(_answer, parts, user, command, payload.get("response_url"))
    return JSONResponse(reply)


@router.post("/mattermost/commands")
async def mattermost_command(request: Request, parts: Parts) -> JSONResponse:
    body = await request.body()
    form = _form(body)
    verify_mattermost(parts.settings, token=form.get("token"), remote=_remote(request))
    user = ChatUser("mattermost", form.get("team_id", ""), form.get("user_id", ""), form.get("channel_id", ""))
    reply = await run_in_threadpool(_answer, parts, user, form.get("text", ""), form.get("response_url"))
    return JSONResponse(reply)
