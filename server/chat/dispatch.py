"""Carry out a parsed chat command with the same services, roles and audit trail as the REST API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from sqlmodel import Session

from server.auth.models import Actor, Role
from server.chat import grammar as g
from server.chat.models import ChatFollowup
from server.chat.replies import Reply, run_summary
from server.chat.security import ChatUser
from server.errors import DomainError, Forbidden
from server.flags import service as flags
from server.flags.cache import announce_change
from server.incidents import service as incidents
from server.incidents.models import IncidentCreate, IncidentPublic, IncidentStatus, IncidentUpdate, Severity
from server.loglevels import service as loglevels
from server.loglevels.sync import announce as announce_loglevels
from server.runbooks import service as runbooks
from server.runbooks.store import RunbookStore
from server.runs import service as runs
from server.settings import Settings


@dataclass
class ChatContext:
    session: Session
    settings: Settings
    runbooks: RunbookStore
    actor: Actor
    user: ChatUser
    response_url: str | None
    redis: redis.Redis | None

    def incident(self, named: str | None) -> str | None:
        """The named incident (the services check that it exists), else the channel's open incident, else none."""
        if named:
            return named
        linked = incidents.open_incident_for_channel(self.session, channel=self.user.channel_ref)
        return linked.key if linked else None

    def run_url(self, run_id: int) -> str:
        return f"{self.settings.effective_public_url}/api/v1/runs/{run_id}"


NEEDS: dict[type, Role] = {
    g.RunCommand: Role.operator, g.RunRef: Role.viewer, g.ApprovalCommand: Role.operator,
    g.ListRunbooks: Role.viewer, g.ListFlags: Role.viewer, g.FlagCommand: Role.operator,
    g.RollbackFlag: Role.operator, g.LogLevelCommand: Role.operator, g.IncidentOpen: Role.operator,
    g.IncidentShow: Role.viewer, g.IncidentResolve: Role.operator, g.Help: Role.viewer,
}


def execute(command: g.Command, ctx: ChatContext) -> Reply:
    """Run one command; the caller commits, which runs what the command left for after it (server.aftercommit:
    enqueueing, change notices)."""
    needed = NEEDS[type(command)]
    if isinstance(command, g.RunRef) and command.verb == "cancel":
        needed = Role.operator
    if not ctx.actor.role.allows(needed):
        raise Forbidden(f"this needs the {needed.value} role; {ctx.actor.name} has {ctx.actor.role.value}")
    handler = HANDLERS[type(command)]
    return handler(command, ctx)


def _run(cmd: g.RunCommand, ctx: ChatContext) -> Reply:
    checked = runbooks.get_runbook(ctx.session, store=ctx.runbooks, runbook_id=cmd.runbook).checked
    run, _steps = runs.create_run(ctx.session, checked=checked, given=dict(cmd.params), actor=ctx.actor,
                                  settings=ctx.settings, incident_id=ctx.incident(cmd.incident))
    assert run.id is not None
    if ctx.response_url:
        ctx.session.add(ChatFollowup(run_id=run.id, platform=ctx.user.platform, response_url=ctx.response_url,
                                     channel=ctx.user.channel_ref))
    runs.send_after_commit(ctx.session, ctx.settings, run_id=run.id, queue=run.queue)
    incident = f" under {run.incident_id}" if run.incident_id else ""
    return Reply(f"Run #{run.id} of `{cmd.runbook}` queued by {ctx.actor.name}{incident}. "
                 f"I will post the outcome here. <{ctx.run_url(run.id)}|Follow it>", public=True)


def _run_ref(cmd: g.RunRef, ctx: ChatContext) -> Reply:
    if cmd.verb == "cancel":
        run = runs.cancel(ctx.session, run_id=cmd.run_id, actor=ctx.actor, reason="cancelled from chat",
                          settings=ctx.settings, client=ctx.redis)
        return Reply(f"Run #{run.id}: cancel requested by {ctx.actor.name} (now {run.status})", public=True)
    run = runs.get_run(ctx.session, run_id=cmd.run_id)
    return Reply(run_summary(run, runs.steps_of(ctx.session, run_id=cmd.run_id), ctx.run_url(cmd.run_id)))


def _approval(cmd: g.ApprovalCommand, ctx: ChatContext) -> Reply:
    runs.decide(ctx.session, run_id=cmd.run_id, step_id=cmd.step_id, actor=ctx.actor, approve=cmd.approve,
                reason=cmd.reason, settings=ctx.settings, client=ctx.redis)  # sends the run after the commit
    verdict = "approved" if cmd.approve else f"rejected ({cmd.reason})"
    return Reply(f"Run #{cmd.run_id}: step `{cmd.step_id}` {verdict} by {ctx.actor.name}", public=True)


def _runbooks(_cmd: g.ListRunbooks, ctx: ChatContext) -> Reply:
    entries, _problems = runbooks.list_runbooks(ctx.session, store=ctx.runbooks)
    lines = [f"• `{e.checked.runbook.id}` {e.checked.runbook.title or ''}" for e in entries if e.checked.runbook]
    return Reply("Runbooks:\n" + ("\n".join(lines) or "none"))


def _flags(cmd: g.ListFlags, ctx: ChatContext) -> Reply:
    env = ctx.settings.flag_environment
    rows = [f for f in flags.list_flags(ctx.session) if not cmd.prefix or f.key.startswith(cmd.prefix)]
    lines = []
    for flag in rows[:50]:
        state = (flag.spec.get("environments", {}).get(env) or {})
        lines.append(f"• `{flag.key}` v{flag.version} {'on' if state.get('enabled') else 'off'} in {env}, "
                     f"{flags.describe_serving(flag.spec, env)}")
    more = f"\n… and {len(rows) - 50} more" if len(rows) > 50 else ""
    return Reply("Flags:\n" + ("\n".join(lines) or "none") + more)


def _flag(cmd: g.FlagCommand, ctx: ChatContext) -> Reply:
    version = flags.set_flag_state(ctx.session, key=cmd.key, environment=ctx.settings.flag_environment,
                                   actor=ctx.actor, enabled=cmd.enabled, duration=cmd.duration, reason=cmd.reason,
                                   incident_id=ctx.incident(cmd.incident))
    announce_change(ctx.session, ctx.settings, ctx.redis, key=cmd.key, version=version.version)
    until = f" until {version.expires_at:%H:%M:%S} UTC, then it reverts" if version.expires_at else ""
    return Reply(f"Flag `{cmd.key}` turned {'on' if cmd.enabled else 'off'} in {ctx.settings.flag_environment} "
                 f"by {ctx.actor.name} (version {version.version}){until}; it "
                 f"{flags.describe_serving(version.spec, ctx.settings.flag_environment)}", public=True)


def _rollback(cmd: g.RollbackFlag, ctx: ChatContext) -> Reply:
    current = flags.get_flag(ctx.session, key=cmd.key, include_deleted=True)
    target = cmd.to_version if cmd.to_version is not None else current.version - 1
    if target < 1:
        raise g.UsageError(f"flag {cmd.key!r} has only version 1; there is nothing before it", "rollback")
    version = flags.rollback(ctx.session, key=cmd.key, to_version=target, actor=ctx.actor, reason=cmd.reason,
                             incident_id=ctx.incident(None))
    announce_change(ctx.session, ctx.settings, ctx.redis, key=cmd.key, version=version.version)
    return Reply(f"Flag `{cmd.key}` rolled back to version {target} by {ctx.actor.name} "
                 f"(now version {version.version})", public=True)


def _loglevel(cmd: g.LogLevelCommand, ctx: ChatContext) -> Reply:
    row = loglevels.raise_level(ctx.session, service=cmd.service, logger=cmd.logger, level=cmd.level,
                                duration=cmd.duration, actor=ctx.actor, reason=cmd.reason,
                                incident_id=ctx.incident(cmd.incident))
    announce_loglevels(ctx.session, ctx.redis, ctx.settings, {cmd.service})
    return Reply(f"`{cmd.service}` logger `{cmd.logger}` at {row.level} until {row.expires_at:%H:%M:%S} UTC "
                 f"(override {row.id}, by {ctx.actor.name}); it reverts by itself", public=True)


def _incident_open(cmd: g.IncidentOpen, ctx: ChatContext) -> Reply:
    incident = incidents.open_incident(ctx.session, actor=ctx.actor, body=IncidentCreate(
        title=cmd.title, severity=Severity(cmd.severity), channel=ctx.user.channel_ref))
    return Reply(f":rotating_light: {incident.key} opened ({incident.severity}): {incident.title}. "
                 f"Commander: {incident.commander}. Runs, flag changes and log levels from this channel are "
                 "filed under it until it is resolved.", public=True)


def _incident_show(cmd: g.IncidentShow, ctx: ChatContext) -> Reply:
    incident = IncidentPublic.of(incidents.get_incident(ctx.session, ref=cmd.ref))
    return Reply(f"{incident.id} [{incident.severity}, {incident.status}] {incident.title}\n"
                 f"Commander: {incident.commander}; opened {incident.opened_at:%Y-%m-%d %H:%M} UTC by "
                 f"{incident.opened_by}\nTimeline: {ctx.settings.effective_public_url}/api/v1/incidents/"
                 f"{incident.id}/timeline")


def _incident_resolve(cmd: g.IncidentResolve, ctx: ChatContext) -> Reply:
    incident = incidents.update_incident(ctx.session, ref=cmd.ref, actor=ctx.actor,
                                         body=IncidentUpdate(status=IncidentStatus.resolved, reason="from chat"))
    return Reply(f":white_check_mark: {incident.key} resolved by {ctx.actor.name}", public=True)


def _help(_cmd: g.Help, ctx: ChatContext) -> Reply:
    return Reply("runbookd commands:\n" + g.help_text(ctx.settings.chat_command))


HANDLERS: dict[type, Callable[[Any, ChatContext], Reply]] = {
    g.RunCommand: _run, g.RunRef: _run_ref, g.ApprovalCommand: _approval, g.ListRunbooks: _runbooks,
    g.ListFlags: _flags, g.FlagCommand: _flag, g.RollbackFlag: _rollback, g.LogLevelCommand: _loglevel,
    g.IncidentOpen: _incident_open, g.IncidentShow: _incident_show, g.IncidentResolve: _incident_resolve,
    g.Help: _help,
}

__all__ = ["ChatContext", "DomainError", "execute"]
