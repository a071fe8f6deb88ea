"""`runbookd incident ...`: open, list, show, resolve, roll back and export incidents on a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from server.client import cli_client
from server.console import make_console, print_error, styled, when

incident_app = typer.Typer(help="Incidents: open, list, show, resolve, roll back, export "
                                "(on a running server: RUNBOOKD_URL, RUNBOOKD_TOKEN).", no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)


@incident_app.command("open")
def open_incident(
    title: Annotated[str, typer.Argument(help="What is wrong, in a line.")],
    severity: Annotated[str, typer.Option(help="sev1 (worst) to sev4.")] = "sev3",
    commander: Annotated[str | None, typer.Option(help="Incident commander; default: you.")] = None,
) -> None:
    """Open an incident and print its id (INC-<n>); pass it to runs, flag changes and log levels."""
    with cli_client() as client:
        incident = client.post("/api/v1/incidents", json={"title": title, "severity": severity,
                                                          "commander": commander})
    err.print(f"{incident['id']} opened ({incident['severity']}): {incident['title']}")
    print(incident["id"])


@incident_app.command("list")
def list_incidents(status: Annotated[str | None, typer.Option(help="open, mitigated or resolved.")] = None) -> None:
    """Newest incidents first."""
    with cli_client() as client:
        rows = client.get("/api/v1/incidents", params={"status": status} if status else None)
    table = Table("id", "sev", "status", "title", "commander", "opened")
    for row in rows:
        table.add_row(row["id"], row["severity"], row["status"], row["title"], row["commander"] or "-",
                      when(row["opened_at"]))
    console.print(table)


@incident_app.command("show")
def show_incident(ref: Annotated[str, typer.Argument(help="INC-<n>")]) -> None:
    """The incident and its timeline."""
    with cli_client() as client:
        incident = client.get(f"/api/v1/incidents/{ref}")
        timeline = client.get(f"/api/v1/incidents/{ref}/timeline")
    console.print(styled((incident["id"], "bold"),
                         f" [{incident['severity']}, {incident['status']}] {incident['title']}"))
    table = Table("time (UTC)", "who", "what")
    for entry in timeline:
        table.add_row(when(entry["ts"]), entry["actor"] or "", entry["summary"])
    console.print(table)


@incident_app.command("resolve")
def resolve_incident(ref: Annotated[str, typer.Argument(help="INC-<n>")],
                     summary: Annotated[str | None, typer.Option(help="What happened, for the report.")] = None,
                     ) -> None:
    """Mark the incident resolved (and mitigated, if it was not yet)."""
    body = {"status": "resolved", **({"summary": summary} if summary else {})}
    with cli_client() as client:
        incident = client.patch(f"/api/v1/incidents/{ref}", json=body)
    err.print(f"{incident['id']} resolved")


@incident_app.command("rollback")
def rollback_incident(ref: Annotated[str, typer.Argument(help="INC-<n>")],
                      dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would change.")] = False,
                      force: Annotated[bool, typer.Option("--force", help="Restore flags someone changed outside "
                                                          "the incident too.")] = False,
                      ) -> None:
    """Revert every change made under the incident that is still in effect; exit 3 if any flag conflicted.

    A flag changed outside the incident only in its metadata (owner, description, tags) is no conflict: its
    behaviour is restored and the newer metadata kept."""
    with cli_client() as client:
        result = client.post(f"/api/v1/incidents/{ref}/rollback", json={"dry_run": dry_run, "force": force})
    would = dry_run
    outcome = {"restore": ("would restore" if would else "restored"), "already_restored": "already restored",
               "conflict": "conflict, left alone"}
    for flag in result["flags"]:
        target = ("delete it (the incident created it)" if flag["target_version"] == 0
                  else f"version {flag['target_version']}")
        err.print(f"flag {flag['flag']}: {outcome.get(flag['outcome'], flag['outcome'])} ({target})"
                  f"{' - ' + flag['detail'] if flag['detail'] else ''}", highlight=False)
    for item in result["loglevels"]:
        err.print(f"log level {item['service']} {item['logger']} {item['level']}: "
                  f"{'would end' if would else 'ended'} override {item['id']}", highlight=False)
    if not result["flags"] and not result["loglevels"]:
        err.print(f"{ref}: nothing to roll back (no change made under it is still in effect)")
    elif dry_run:
        err.print(f"{ref}: dry run, nothing changed; run again without --dry-run to do it")
    else:
        err.print(f"{ref}: rolled back, recorded in the audit log as incident.rollback")
    if result["conflicts"]:
        raise typer.Exit(3)


@incident_app.command("export")
def export_incident(
    ref: Annotated[str, typer.Argument(help="INC-<n>")],
    format: Annotated[str, typer.Option("--format", help="md or json.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File; default stdout.")] = None,
) -> None:
    """The post-incident report: summary, times to mitigate and resolve, runs and findings, changes, timeline."""
    if format not in ("md", "json"):
        print_error(err, f"unsupported --format {format!r}; use md or json")
        raise typer.Exit(2)
    with cli_client() as client:
        if format == "json":
            text = orjson.dumps(client.get(f"/api/v1/incidents/{ref}/report", params={"format": "json"}),
                                option=orjson.OPT_INDENT_2).decode() + "\n"
        else:
            text = client.get_text(f"/api/v1/incidents/{ref}/report", params={"format": "md"})
    if output:
        output.write_text(text)
        err.print(f"report written to {output}")
    else:
        print(text, end="")
