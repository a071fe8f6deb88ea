"""`runbookd loglevel ...`: temporary log levels on a running server (RUNBOOKD_URL, RUNBOOKD_TOKEN)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from server.client import cli_client
from server.console import make_console, when

loglevel_app = typer.Typer(help="Raise a service's log level for a while, list and end overrides "
                                "(on a running server: RUNBOOKD_URL, RUNBOOKD_TOKEN).", no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)


def _until(override: dict[str, Any]) -> str:
    return when(override["expires_at"]) if override["expires_at"] else "until ended"


@loglevel_app.command("set")
def set_level(
    service: Annotated[str, typer.Argument(help="Service whose agent applies it; _runbookd for runbookd itself.")],
    logger: Annotated[str, typer.Argument(help="Logger name; ROOT for the root logger.")],
    level: Annotated[str, typer.Argument(help="OFF, FATAL, ERROR, WARN, INFO, DEBUG or TRACE.")],
    duration: Annotated[str | None, typer.Option("--for", help="How long, e.g. 15m; DEBUG and TRACE need it.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; kept in the audit log.")] = None,
    incident: Annotated[str | None, typer.Option("--incident", help="Incident id this belongs to.")] = None,
) -> None:
    """Override one logger's level; it reverts by itself when --for ends."""
    body: dict[str, Any] = {"reason": reason, "incident_id": incident}
    if duration:
        body["for"] = duration
    with cli_client() as client:
        if service == "_runbookd":
            client.post(f"/debug/loggers/{logger}", json={"configuredLevel": level, **body})
            override = (client.get(f"/debug/loggers/{logger}") or {}).get("override") or {}
            err.print(f"override {override.get('id', '?')}: runbookd's logger {logger!r} at {level.upper()} "
                      f"{_until(override) if override else ''}".rstrip())
            if override.get("id") is not None:
                print(override["id"])
            return
        override = client.post("/api/v1/loglevels", json={"service": service, "logger": logger, "level": level,
                                                           **body})
    err.print(f"override {override['id']}: {service} {logger} at {override['level']} {_until(override)}")
    print(override["id"])


@loglevel_app.command("list")
def list_levels(
    service: Annotated[str | None, typer.Option(help="Only this service (_runbookd: runbookd's own).")] = None,
    include_ended: Annotated[bool, typer.Option("--all", help="Include ended overrides.")] = False,
    incident: Annotated[str | None, typer.Option("--incident", help="Only this incident's.")] = None,
) -> None:
    """List overrides of every service (runbookd's own, `_runbookd`, included), newest first; `*` marks the one
    in effect on its logger."""
    params: dict[str, Any] = {"active": not include_ended}
    if service:
        params["service"] = service
    if incident:
        params["incident_id"] = incident
    with cli_client() as client:
        overrides = client.get("/api/v1/loglevels", params=params)
        if not service:  # the API leaves runbookd's own loggers out unless asked for them by name
            overrides += client.get("/api/v1/loglevels", params={**params, "service": "_runbookd"})
    overrides.sort(key=lambda o: o["id"], reverse=True)
    if not overrides:
        err.print("no " + ("" if include_ended else "active ") + "log-level overrides"
                  + (f" for {service}" if service else "") + ("" if include_ended else " (--all shows ended ones)"))
        return
    table = Table("id", "service", "logger", "level", "until", "by", "reason", "ended")
    for o in overrides:
        ended = f"{o['end_reason']} by {o['ended_by']}" if o["ended_at"] else "-"
        table.add_row(str(o["id"]) + (" *" if o["effective"] else ""), o["service"], o["logger"], o["level"],
                      _until(o), o["created_by"], o["reason"] or "-", ended)
    console.print(table)


@loglevel_app.command("end")
def end_level(
    override_id: Annotated[int, typer.Argument(help="Override id (see `runbookd loglevel list`).")],
    reason: Annotated[str | None, typer.Option(help="Why; kept in the audit log.")] = None,
) -> None:
    """End an override now; the logger goes back to the next older override, or to its own level."""
    with cli_client() as client:
        override = client.delete(f"/api/v1/loglevels/overrides/{override_id}",
                                 params={"reason": reason} if reason else None)
    err.print(f"override {override['id']} ({override['service']} {override['logger']}) ended")
