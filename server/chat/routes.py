"""Chat endpoints: Slack slash commands and buttons, Mattermost slash commands. No bot process, no cloud.

Forged, unsigned, stale and replayed requests get 401 and do nothing. Everything else is answered with a
chat message (HTTP 200), mistakes included, because chat clients show any other status as a bare failure.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.chat import grammar as g
from server.chat.dispatch import ChatContext, execute
from server.chat.replies import Reply
from server.chat.security import ChatUser, authorize, verify_mattermost, verify_slack
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


def _answer(request: Request, user: ChatUser, command: g.Command | str, response_url: str | None) -> dict[str, Any]:
    """Parse, authorise, execute and commit (then enqueue), turning every expected failure into a chat reply."""
    settings: Settings = request.app.state.settings
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        try:
            if isinstance(command, str):
                command = g.parse(command)
            actor = authorize(settings, user)
            ctx = ChatContext(session=session, engine=request.app.state.engine, settings=settings,
                              runbooks=runbooks.store_for(settings.runbooks_dir), actor=actor, user=user,
                              response_url=response_url, redis=request.app.state.redis)
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


async def _verified_slack_form(request: Request) -> dict[str, str]:
    body = await request.body()
    verify_slack(request.app.state.settings, request.app.state.redis, body=body,
                 timestamp=request.headers.get("x-slack-request-timestamp"),
                 signature=request.headers.get("x-slack-signature"), remote=_remote(request))
    return _form(body)


@router.post("/slack/commands")
async def slack_command(request: Request) -> JSONResponse:
    form = await _verified_slack_form(request)
    user = ChatUser("slack", form.get("team_id", ""), form.get("user_id", ""), form.get("channel_id", ""))
    reply = await run_in_threadpool(_answer, request, user, form.get("text", ""), form.get("response_url"))
    return JSONResponse(reply)


@router.post("/slack/actions")
async def slack_action(request: Request) -> JSONResponse:
    """Approve / Reject buttons on steps waiting for approval."""
    form = await _verified_slack_form(request)
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
    reply = await run_in_threadpool(_answer, request, user, command, payload.get("response_url"))
    return JSONResponse(reply)


@router.post("/mattermost/commands")
async def mattermost_command(request: Request) -> JSONResponse:
    body = await request.body()
    form = _form(body)
    verify_mattermost(request.app.state.settings, token=form.get("token"), remote=_remote(request))
    user = ChatUser("mattermost", form.get("team_id", ""), form.get("user_id", ""), form.get("channel_id", ""))
    reply = await run_in_threadpool(_answer, request, user, form.get("text", ""), form.get("response_url"))
    return JSONResponse(reply)
