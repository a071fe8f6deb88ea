"""`runbookd run RUNBOOK k=v ... [--follow]` and `runbookd runs list|show|cancel|approve|reject`, over the API."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from server.client import Client, ClientError
from server.console import make_console, print_error, when
from server.runs import findings

runs_app = typer.Typer(help="List, show, cancel and approve runs on a server.", no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)
STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow",
                "running": "cyan", "waiting_approval": "magenta", "skipped": "dim", "pending": "dim"}
OUTPUT_LINES = 12  # live output lines kept on screen under the table


def _fail(exc: ClientError) -> typer.Exit:
    print_error(err, exc.message)
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


def _status(status: str, shown: str | None = None) -> Text:
    """A status in its colour; a Text, not markup, since a status without a colour (queued) makes no tag."""
    return Text(shown or status, style=STATUS_STYLE.get(status, ""))


def _steps_table(run: dict[str, Any]) -> Table:
    table = Table("step", "phase", "uses", "status", "tries", "time", "note",
                  title=Text.assemble(f"run {run['id']} ({run['runbook']}): ", _status(run["status"])))
    for step in run["steps"]:
        shown = step["status"] if step.get("approval") != "waiting" else "waiting approval"
        note = step.get("error") or ""
        status = _status(step["status"], shown)
        if step.get("problem_found"):
            # The check confirmed a problem: not a green success, though `if:` still reads the status.
            status = Text(f"problem found ({step['status']})", style="bold red")
            worst = (step.get("findings") or [{}])[0]
            note = note or worst.get("message", "")
        table.add_row(step["step_id"], step.get("phase") or "", step["uses"], status,
                      str(step["attempts"]),
                      f"{step['duration_s']:.2f}s" if step.get("duration_s") is not None else "", note[:80])
    return table


def _findings_and_artifacts(out: Any, run: dict[str, Any], links: Client | None = None) -> None:
    """What a run found, worst first, then its files with how to get them: the head of every run summary."""
    found = run.get("findings") or []
    if found:
        out.print(Text(f"Findings of run {run['id']}:", style="bold"))
        for finding in found:
            style = {"error": "red", "warning": "yellow"}.get(finding["severity"], "")
            out.print(Text("  " + findings.line(finding), style=style), overflow="fold")
    files = run.get("artifacts") or []
    if files:
        link = None
        if links is not None:
            try:
                link = links.request("POST", f"/api/v1/runs/{run['id']}/artifacts/link", json={})
            except ClientError:
                link = None
        valid = (f" (link valid until {when(link['expires_at'])}, no token needed: {link['url']})"
                 if link else "")
        out.print(Text(f"Artifacts of run {run['id']}{valid}:", style="bold"), overflow="fold")
        for item in files:
            opened = f"{link['url']}/{item['name']}" if link else f"runbookd runs artifacts {run['id']} {item['name']}"
            out.print(f"  {item['name']}  {_size(item['size'])}  {item['content_type']}  {opened}", highlight=False,
                      overflow="fold")
        if link is None:
            out.print(f"  all: runbookd runs artifacts {run['id']} -o DIR; a link: runbookd runs artifacts "
                      f"{run['id']} --link", highlight=False)


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def _events(client: Client, run_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The run's events until run.finished, each with its message."""
    for event, data in client.events(f"/api/v1/runs/{run_id}/events"):
        yield event, orjson.loads(data) if data.startswith("{") else {}
        if event == "run.finished":
            return


def _line(event: str, message: dict[str, Any], run_id: int, *, results: bool = False) -> str | None:
    """What an event adds to the output: output lines, how to approve a step that waits, and with
    `results` (where no live table shows them) each step's result."""
    step, data = message.get("step_id"), message.get("data") or {}
    if event == "step.output":
        return f"{step}: {data.get('line', '')}"
    if event == "step.waiting_approval":
        return (f"step {step} waits for approval: runbookd runs approve {run_id} {step}"
                + _what_it_runs(data, "\n  "))
    if event == "step.finished" and data.get("reason") == "dry run" and results:
        return None  # the dry run's table below shows every step's rendered inputs
    if event == "step.finished" and results:
        return (f"{step}: {data.get('status')}" + (f" ({data['reason']})" if data.get("reason") else "")
                + (f": {data['error']}" if data.get("error") else ""))
    return None


def _what_it_runs(shown: dict[str, Any], sep: str) -> str:
    """`will run: argv: systemctl restart x` and the rendered inputs (secrets masked by the server)."""
    parts = []
    for key in ("approval", "condition"):
        if shown.get(key):
            parts.append(str(shown[key]))
    if shown.get("action"):
        parts.append(f"will run: {shown['action']}")
    if shown.get("inputs") is not None:
        parts.append("inputs: " + orjson.dumps(shown["inputs"], default=str).decode())
    if shown.get("note"):
        parts.append(str(shown["note"]))
    return "".join(sep + p for p in parts)


def _pending(out: Any, run: dict[str, Any]) -> None:
    """Each waiting step with what it will run, and each dry-run step with what it would have run."""
    for step in run["steps"]:
        outputs = step.get("outputs") or {}
        if step.get("approval") == "waiting" and isinstance(outputs.get("awaiting_approval"), dict):
            out.print(f"step {step['step_id']} waits for approval: runbookd runs approve {run['id']} "
                      f"{step['step_id']}" + _what_it_runs(outputs["awaiting_approval"], "\n  "), highlight=False,
                      soft_wrap=True)
        elif outputs.get("dry_run"):
            out.print(f"step {step['step_id']} ({outputs.get('uses')}) would run" + _what_it_runs(outputs, "\n  "),
                      highlight=False, soft_wrap=True)


def _follow(client: Client, run: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A live table of the steps on a terminal; elsewhere (a pipe, a log) plain lines as events come,
    then the final table: a live view there would only leave its last frame, cut to the width."""
    run_id = run["id"]
    out = make_console(stderr=as_json)
    if not out.is_terminal:
        for event, message in _events(client, run_id):
            line = _line(event, message, run_id, results=True)
            if line is not None:
                out.print(line)
        run = client.request("GET", f"/api/v1/runs/{run_id}")
        _findings_and_artifacts(out, run, client)
        _pending(out, run)
        out.print(_steps_table(run))
        return run
    lines: list[str] = []

    def view() -> Group:
        return Group(_steps_table(run), Text("\n".join(lines[-OUTPUT_LINES:]), style="dim", overflow="fold"))

    # Transient: when the run ends the live view gives way to the summary, which leads with the findings.
    with Live(view(), console=out, refresh_per_second=8, transient=True) as live:
        for event, message in _events(client, run_id):
            line = _line(event, message, run_id)
            if line is not None:
                lines.append(line)
            if event != "step.output":
                run = client.request("GET", f"/api/v1/runs/{run_id}")
            live.update(view())
    run = client.request("GET", f"/api/v1/runs/{run_id}")
    _findings_and_artifacts(out, run, client)
    _pending(out, run)
    out.print(view())
    return run


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
                run = _follow_until_interrupted(client, run, output == "json")
    except ClientError as exc:
        raise _fail(exc) from None
    _finish(run, follow, output)


def _follow_until_interrupted(client: Client, run: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Follow; on Ctrl-C say that the run goes on on the server and how to reattach (exit 130)."""
    try:
        return _follow(client, run, as_json)
    except KeyboardInterrupt:
        err.print(f"\nstopped following; run {run['id']} goes on on the server. Reattach: runbookd runs follow "
                  f"{run['id']}; stop it: runbookd runs cancel {run['id']}", highlight=False)
        raise typer.Exit(130) from None


def _finish(run: dict[str, Any], follow: bool, output: str) -> None:
    if output == "json":
        sys.stdout.write(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not follow:
        console.print(f"run {run['id']} {run['status']}: {run['url']}", highlight=False)
    else:
        err.print(Text.assemble(f"run {run['id']} ", _status(run["status"]),
                                f": {run['error']}" if run.get("error") else ""))
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
        table.add_row(str(run["id"]), run["runbook"], _status(run["status"]),
                      run["actor"], run.get("incident_id") or "", when(run["created_at"]),
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
    _findings_and_artifacts(console, run)
    _pending(console, run)
    console.print(_steps_table(run))
    console.print(f"params: {orjson.dumps(run['params']).decode()}", highlight=False)
    if run.get("trace_id"):  # distributed tracing was on as the run was created (docs/tracing.md)
        console.print(f"trace: {run['trace_id']}", highlight=False)
    if run.get("error"):
        print_error(console, run["error"])


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
            run = client.request("POST", f"/api/v1/runs/{run_id}/steps/{step}/{verb}", json={"reason": reason})
    except ClientError as exc:
        raise _fail(exc) from None
    row: dict[str, Any] = next((s for s in run.get("steps", []) if s["step_id"] == step), {})
    shown = (row.get("outputs") or {}).get("awaiting_approval") or {}
    what = _what_it_runs({k: shown.get(k) for k in ("action",)}, "; ") if shown else ""
    if reject:
        err.print(f"run {run_id}: step {step} rejected{what.replace('will run', 'would have run')}; the step "
                  f"fails with your reason and the run stops there (runbookd runs show {run_id})", highlight=False)
    else:
        err.print(f"run {run_id}: step {step} approved{what}; the run goes on: runbookd runs follow {run_id}",
                  highlight=False)


@runs_app.command("artifacts")
def artifacts_command(
    run_id: int,
    name: Annotated[str | None, typer.Argument(help="One artifact; all of them when left out.")] = None,
    out_dir: Annotated[str, typer.Option("--output-dir", "-o", help="Directory to save into.")] = ".",
    link: Annotated[bool, typer.Option("--link", help="Print a short-lived signed link (opens without a token) "
                                       "instead of downloading.")] = False,
) -> None:
    """Download a run's artifacts (plots, profiles, reports), or print a signed link to them."""
    from pathlib import Path

    try:
        with Client() as client:
            if link:
                made = client.request("POST", f"/api/v1/runs/{run_id}/artifacts/link", json={"name": name})
                console.print(made["url"], highlight=False, soft_wrap=True)
                err.print(f"valid until {when(made['expires_at'])}; opens without a token; every use is audited")
                return
            items = client.request("GET", f"/api/v1/runs/{run_id}/artifacts")
            if name is not None:
                items = [i for i in items if i["name"] == name]
                if not items:
                    raise ClientError(f"run {run_id} has no artifact {name!r}; `runbookd runs artifacts {run_id} "
                                      "--link` or `runbookd runs show` lists them", 404)
            if not items:
                err.print(f"run {run_id} has no artifacts")
                return
            target = Path(out_dir)
            target.mkdir(parents=True, exist_ok=True)
            for item in items:
                path = target / item["name"]
                client.download(f"/api/v1/runs/{run_id}/artifacts/{item['name']}", path)
                err.print(f"{path}  {_size(item['size'])}  {item['content_type']}", highlight=False)
    except ClientError as exc:
        raise _fail(exc) from None


@runs_app.command("follow")
def follow_command(run_id: int,
                   output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text") -> None:
    """Reattach to a run: its live view until it ends (exit 0 only when it succeeds)."""
    try:
        with Client() as client:
            run = client.request("GET", f"/api/v1/runs/{run_id}")
            run = _follow_until_interrupted(client, run, output == "json")
    except ClientError as exc:
        raise _fail(exc) from None
    _finish(run, True, output)


@runs_app.command("rerun")
def rerun_command(
    run_id: int,
    params: Annotated[list[str] | None, typer.Argument(help="Params to change, as name=value.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Watch the new run live.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Run a finished run again with the same runbook definition and params (changing those given)."""
    try:
        with Client() as client:
            run = client.request("POST", f"/api/v1/runs/{run_id}/rerun", json={"params": parse_params(params or [])})
            err.print(f"run {run['id']} reruns run {run_id}", highlight=False)
            if follow:
                run = _follow_until_interrupted(client, run, output == "json")
    except ClientError as exc:
        raise _fail(exc) from None
    _finish(run, follow, output)
