"""The chat command grammar, shared by Slack and Mattermost: text in, a typed command or a usage error out.

Parsing only: nothing here runs anything, so a mistake never half-executes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from server.durations import parse_duration
from server.ids import is_id

USAGE = {
    "run": "run RUNBOOK [key=value ...] [incident=ID]",
    "status": "status RUN",
    "cancel": "cancel RUN",
    "approve": "approve RUN STEP",
    "reject": "reject RUN STEP [reason ...]",
    "runbooks": "runbooks",
    "flags": "flags [prefix]",
    "flag": "flag KEY on|off [for 30m] [incident=ID] [reason ...]",
    "rollback": "rollback flag KEY [to N] [reason ...]",
    "loglevel": "loglevel SERVICE LOGGER LEVEL for 15m [incident=ID] [reason ...]",
    "incident": 'incident open "title" sev1..sev4 | incident ID | incident resolve ID',
    "help": "help",
}
LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "OFF")
_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.S)
_RUN_ID = re.compile(r"^[0-9]{1,18}$")  # ASCII only: \d matches other scripts' digits


class UsageError(ValueError):
    """What was wrong, and the usage line of the command (or the whole help)."""

    def __init__(self, problem: str, command: str | None = None) -> None:
        self.problem = problem
        self.usage = USAGE.get(command or "", "")
        super().__init__(f"{problem}. Usage: {self.usage}" if self.usage else problem)


@dataclass(frozen=True)
class RunCommand:
    runbook: str
    params: dict[str, str] = field(default_factory=dict)
    incident: str | None = None


@dataclass(frozen=True)
class RunRef:
    verb: str          # status, cancel
    run_id: int


@dataclass(frozen=True)
class ApprovalCommand:
    run_id: int
    step_id: str
    approve: bool
    reason: str | None = None


@dataclass(frozen=True)
class ListRunbooks:
    pass


@dataclass(frozen=True)
class ListFlags:
    prefix: str | None = None


@dataclass(frozen=True)
class FlagCommand:
    key: str
    enabled: bool
    duration: timedelta | None = None
    reason: str | None = None
    incident: str | None = None


@dataclass(frozen=True)
class RollbackFlag:
    key: str
    to_version: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class LogLevelCommand:
    service: str
    logger: str
    level: str
    duration: timedelta
    reason: str | None = None
    incident: str | None = None


@dataclass(frozen=True)
class IncidentOpen:
    title: str
    severity: str


@dataclass(frozen=True)
class IncidentShow:
    ref: str


@dataclass(frozen=True)
class IncidentResolve:
    ref: str


@dataclass(frozen=True)
class Help:
    pass


Command = (RunCommand | RunRef | ApprovalCommand | ListRunbooks | ListFlags | FlagCommand | RollbackFlag
           | LogLevelCommand | IncidentOpen | IncidentShow | IncidentResolve | Help)


def _run_id(text: str, command: str) -> int:
    if not _RUN_ID.match(text):
        raise UsageError(f"{text!r} is not a run id (a number, as in `status 42`)", command)
    return int(text)


def _take_incident(words: list[str]) -> tuple[list[str], str | None]:
    incident = None
    rest = []
    for word in words:
        if word.lower().startswith("incident="):
            incident = word.split("=", 1)[1] or None
        else:
            rest.append(word)
    return rest, incident


def _duration(text: str, command: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(str(exc), command) from None


def parse(text: str) -> Command:
    """Parse one command line (without the slash command word)."""
    try:
        words = shlex.split(text.strip())
    except ValueError as exc:
        raise UsageError(f"cannot read the command: {exc} (check the quotes)") from None
    if not words:
        return Help()
    verb, args = words[0].lower(), words[1:]
    parser = _PARSERS.get(verb)
    if parser is None:
        raise UsageError(f"unknown command {verb!r}; try `help`")
    return parser(args)


def _parse_run(args: list[str]) -> Command:
    args, incident = _take_incident(args)
    if not args:
        raise UsageError("name the runbook to run", "run")
    params: dict[str, str] = {}
    for word in args[1:]:
        match = _KEY_VALUE.match(word)
        if not match:
            raise UsageError(f"{word!r} is not key=value", "run")
        params[match.group(1)] = match.group(2)
    return RunCommand(runbook=args[0], params=params, incident=incident)


def _parse_run_ref(verb: str) -> Callable[[list[str]], Command]:
    def parse_ref(args: list[str]) -> Command:
        if len(args) != 1:
            raise UsageError("give exactly one run id", verb)
        return RunRef(verb=verb, run_id=_run_id(args[0], verb))

    return parse_ref


def _parse_approval(approve: bool) -> Callable[[list[str]], Command]:
    verb = "approve" if approve else "reject"

    def parse_approval(args: list[str]) -> Command:
        if len(args) < 2 or (approve and len(args) > 2):
            raise UsageError("give the run id and the step id", verb)
        reason = " ".join(args[2:]) or None
        return ApprovalCommand(run_id=_run_id(args[0], verb), step_id=args[1], approve=approve, reason=reason)

    return parse_approval


def _parse_flags(args: list[str]) -> Command:
    if len(args) > 1:
        raise UsageError("give at most one key prefix", "flags")
    return ListFlags(prefix=args[0] if args else None)


def _parse_flag(args: list[str]) -> Command:
    args, incident = _take_incident(args)
    if len(args) < 2 or args[1].lower() not in ("on", "off"):
        raise UsageError("give the flag key and on or off", "flag")
    key, enabled, rest = args[0], args[1].lower() == "on", args[2:]
    duration = None
    if rest and rest[0].lower() == "for":
        if len(rest) < 2:
            raise UsageError("`for` needs a duration such as 30m", "flag")
        duration, rest = _duration(rest[1], "flag"), rest[2:]
    return FlagCommand(key=key, enabled=enabled, duration=duration, reason=" ".join(rest) or None,
                       incident=incident)


def _parse_rollback(args: list[str]) -> Command:
    if len(args) < 2 or args[0].lower() != "flag":
        raise UsageError("only flags can be rolled back from chat", "rollback")
    key, rest, to_version = args[1], args[2:], None
    if rest and rest[0].lower() == "to":
        if len(rest) < 2 or not is_id(rest[1]):
            raise UsageError("`to` needs a version number", "rollback")
        to_version, rest = int(rest[1]), rest[2:]
    return RollbackFlag(key=key, to_version=to_version, reason=" ".join(rest) or None)


def _parse_loglevel(args: list[str]) -> Command:
    args, incident = _take_incident(args)
    if len(args) < 5 or args[3].lower() != "for":
        raise UsageError("give service, logger, level and `for` with a duration", "loglevel")
    level = args[2].upper()
    if level not in LEVELS:
        raise UsageError(f"unknown level {args[2]!r}; use one of {', '.join(LEVELS)}", "loglevel")
    return LogLevelCommand(service=args[0], logger=args[1], level=level, duration=_duration(args[4], "loglevel"),
                           reason=" ".join(args[5:]) or None, incident=incident)


def _parse_incident(args: list[str]) -> Command:
    if not args:
        raise UsageError("say what to do with the incident", "incident")
    if args[0].lower() == "open":
        if len(args) != 3 or args[2].lower() not in ("sev1", "sev2", "sev3", "sev4"):
            raise UsageError('give a quoted title and a severity sev1..sev4', "incident")
        return IncidentOpen(title=args[1], severity=args[2].lower())
    if args[0].lower() == "resolve":
        if len(args) != 2:
            raise UsageError("give the incident id to resolve", "incident")
        return IncidentResolve(ref=args[1])
    if len(args) == 1:
        return IncidentShow(ref=args[0])
    raise UsageError(f"unknown incident action {args[0]!r}", "incident")


_PARSERS: dict[str, Callable[[list[str]], Command]] = {
    "run": _parse_run,
    "status": _parse_run_ref("status"),
    "cancel": _parse_run_ref("cancel"),
    "approve": _parse_approval(True),
    "reject": _parse_approval(False),
    "runbooks": lambda args: ListRunbooks(),
    "flags": _parse_flags,
    "flag": _parse_flag,
    "rollback": _parse_rollback,
    "loglevel": _parse_loglevel,
    "incident": _parse_incident,
    "help": lambda args: Help(),
}


def help_text(command_word: str) -> str:
    return "\n".join(f"`/{command_word} {usage}`" for usage in USAGE.values())
