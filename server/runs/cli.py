"""`runbookd run RUNBOOK k=v ... [--follow]` and `runbookd runs list|show|cancel|approve|reject`, over the API."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from server.client import Client, ClientError

runs_app = typer.Typer(help="List, show, cancel and approve runs on a server.", no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow",
                "running": "cyan", "waiting_approval": "magenta", "skipped": "dim", "pending": "dim"}
OUTPUT_LINES = 12  # live output lines kept on screen under the table


def _fail(exc: ClientError) -> typer.Exit:
    err.print(f"[red]error:[/] {exc.message}", highlight=False)
    for detail in exc.details if isinstance(exc.details, list) else []:
        if isinstance(detail, dict):
            err.print(f"  {detail.get('field', '')}: {detail.get('message', '')}", highlight=False)
    return typer.Exit(1)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: write params as name=value")
        params[name] = value  # the server converts to the declared type
    return params


def _steps_table(run: dict[str, Any]) -> Table:
    table = Table("step", "phase", "uses", "status", "tries", "time", "note", title=f"run {run['id']} "
                  f"({run['runbook']}): [{STATUS_STYLE.get(run['status'], '')}]{run['status']}[/]")
    for step in run["steps"]:
        status = step["status"] if step.get("approval") != "waiting" else "waiting approval"
        note = step.get("error") or ""
        table.add_row(step["step_id"], step.get("phase") or "", step["uses"],
                      f"[{STATUS_STYLE.get(step['status'], '')}]{status}[/]", str(step["attempts"]),
                      f"{step['duration_s']:.2f}s" if step.get("duration_s") is not None else "", note[:80])
    return table


def _follow(client: Client, run: dict[str, Any], as_json: bool) -> dict[str, Any]:
    run_id = run["id"]
    lines: list[str] = []
    live_console = Console(stderr=as_json, soft_wrap=True)

    def view() -> Group:
        return Group(_steps_table(run), Text("\n".join(lines[-OUTPUT_LINES:]), style="dim"))

    with Live(view(), console=live_console, refresh_per_second=8, transient=False) as live:
        for event, data in client.events(f"/api/v1/runs/{run_id}/events"):
            message = orjson.loads(data) if data.startswith("{") else {}
            if event == "step.output":
                lines.append(f"{message.get('step_id')}: {(message.get('data') or {}).get('line', '')}")
            elif event == "step.waiting_approval":
                lines.append(f"step {message.get('step_id')} waits for approval: runbookd runs approve {run_id} "
                             f"{message.get('step_id')}")
            if event != "step.output":
                run = client.request("GET", f"/api/v1/runs/{run_id}")
            live.update(view())
            if event == "run.finished":
                break
    return client.request("GET", f"/api/v1/runs/{run_id}")


def run_command(
    runbook: Annotated[str, typer.Argument(help="Runbook id.")],
    params: Annotated[list[str] | None, typer.Argument(help="Params as name=value.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Watch the steps live; exit 0 only on success.")]
    = False,
    incident: Annotated[str | None, typer.Option("--incident", help="Incident id to attach the run to.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render the steps without running them.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Start a runbook on the server at RUNBOOKD_URL (token from RUNBOOKD_TOKEN)."""
    body = {"runbook": runbook, "params": parse_params(params or []), "incident_id": incident, "dry_run": dry_run}
    try:
        with Client() as client:
            # One key per invocation: a retried POST (flaky network) never starts the run twice.
            run = client.request("POST", "/api/v1/runs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            if follow:
                run = _follow(client, run, output == "json")
    except ClientError as exc:
        raise _fail(exc) from None
    if output == "json":
        sys.stdout.write(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not follow:
        console.print(f"run {run['id']} {run['status']}: {run['url']}", highlight=False)
    else:
        style = STATUS_STYLE.get(run["status"], "")
        err.print(f"run {run['id']} [{style}]{run['status']}[/]" + (f": {run['error']}" if run.get("error") else ""),
                  highlight=False)
    if follow and run["status"] != "succeeded":
        raise typer.Exit(1)


@runs_app.command("list")
def list_runs(
    runbook: Annotated[str | None, typer.Option(help="Only this runbook.")] = None,
    status: Annotated[str | None, typer.Option(help="Only these statuses, comma-separated.")] = None,
    incident: Annotated[str | None, typer.Option(help="Only runs of this incident.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """Recent runs, newest first."""
    query = {k: v for k, v in {"runbook": runbook, "status": status, "incident_id": incident, "limit": limit}.items()
             if v is not None}
    try:
        with Client() as client:
            page = client.request("GET", "/api/v1/runs", params=query)
    except ClientError as exc:
        raise _fail(exc) from None
    table = Table("id", "runbook", "status", "actor", "incident", "created", "duration")
    for run in page["items"]:
        table.add_row(str(run["id"]), run["runbook"], f"[{STATUS_STYLE.get(run['status'], '')}]{run['status']}[/]",
                      run["actor"], run.get("incident_id") or "", run["created_at"][:19],
                      f"{run['duration_s']:.1f}s" if run.get("duration_s") is not None else "")
    console.print(table)


@runs_app.command("show")
def show(run_id: int, output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text") -> None:
    """One run: status, params (secrets masked) and each step."""
    try:
        with Client() as client:
            run = client.request("GET", f"/api/v1/runs/{run_id}")
    except ClientError as exc:
        raise _fail(exc) from None
    if output == "json":
        sys.stdout.write(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    console.print(_steps_table(run))
    console.print(f"params: {orjson.dumps(run['params']).decode()}", highlight=False)
    if run.get("error"):
        console.print(f"[red]error:[/] {run['error']}", highlight=False)


@runs_app.command("cancel")
def cancel(run_id: int, reason: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None) -> None:
    """Cancel a run; a running shell step is stopped within about two seconds."""
    try:
        with Client() as client:
            run = client.request("POST", f"/api/v1/runs/{run_id}/cancel", json={"reason": reason})
    except ClientError as exc:
        raise _fail(exc) from None
    err.print(f"run {run_id}: {run['status']}" + (" (stopping)" if run["status"] == "running" else ""))


@runs_app.command("approve")
def approve(run_id: int, step: str, reason: Annotated[str | None, typer.Option(help="For the audit log.")] = None,
            reject: Annotated[bool, typer.Option("--reject", help="Reject instead (a reason is required).")] = False,
            ) -> None:
    """Approve (or --reject) the step a run waits on."""
    verb = "reject" if reject else "approve"
    try:
        with Client() as client:
            client.request("POST", f"/api/v1/runs/{run_id}/steps/{step}/{verb}", json={"reason": reason})
    except ClientError as exc:
        raise _fail(exc) from None
    err.print(f"run {run_id}: step {step} {verb}d")
