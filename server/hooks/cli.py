"""`runbookd hooks deliveries|show` and `runbookd triggers list|test|validate`.

validate works offline (like `runbooks validate`); the others ask a server (RUNBOOKD_URL, RUNBOOKD_TOKEN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from server.client import cli_client
from server.console import make_console, styled
from server.hooks import rules as rules_mod
from server.runbooks.store import TRIGGER_SUFFIX, load_directory
from server.settings import get_settings

hooks_app = typer.Typer(help="Alert and webhook deliveries a server received, and what each started.",
                        no_args_is_help=True)
triggers_app = typer.Typer(help="Trigger rules: list a server's, test a sample payload against them, validate "
                                "files offline.", no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)


@hooks_app.command("deliveries")
def deliveries(
    source: Annotated[str | None, typer.Option(help="alertmanager, generic:NAME or schedule.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the deliveries as JSON, decisions included.")] = False,
) -> None:
    """Newest deliveries first: when, from where, how many alerts, and how many runs started, were duplicates,
    suppressed by a guard or ignored."""
    params: dict[str, Any] = {"limit": limit, **({"source": source} if source else {})}
    with cli_client() as client:
        page = client.get("/api/v1/hooks/deliveries", params=params)
    if as_json:
        print(orjson.dumps(page["items"], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "received (UTC)", "source", "alerts", "started", "dup", "suppressed", "ignored", "runs")
    for row in page["items"]:
        runs = [str(d["run_id"]) for d in row["result"].get("decisions", []) if d.get("outcome") == "started"]
        table.add_row(str(row["id"]), row["received_at"][:19].replace("T", " "), row["source"], str(row["alerts"]),
                      str(row["started"]), str(row["duplicates"]), str(row["suppressed"]), str(row["ignored"]),
                      ", ".join(runs[:8]) + (" …" if len(runs) > 8 else ""))
    console.print(table)


@hooks_app.command("show")
def show(delivery_id: Annotated[int, typer.Argument(help="A delivery id from `hooks deliveries`.")]) -> None:
    """One delivery: each alert x rule decision with its reason."""
    with cli_client() as client:
        row = client.get(f"/api/v1/hooks/deliveries/{delivery_id}")
    err.print(f"delivery {row['id']} from {row['source']} at {row['received_at'][:19]}: {row['alerts']} alert(s), "
              f"{row['started']} started, {row['duplicates']} duplicate(s), {row['suppressed']} suppressed, "
              f"{row['ignored']} ignored")
    table = Table("alert", "rule", "outcome", "run", "reason")
    for d in row["result"].get("decisions", []):
        table.add_row(d.get("alertname") or d["fingerprint"], d.get("rule") or "-", d["outcome"],
                      str(d.get("run_id") or ""), d.get("reason") or "")
    console.print(table)


@triggers_app.command("list")
def list_triggers() -> None:
    """The trigger rules a server loaded, and the problems of the files it skipped."""
    with cli_client() as client:
        body = client.get("/api/v1/triggers")
    table = Table("id", "runbook", "source", "status", "schedule", "file")
    for rule in body["rules"]:
        schedule = rule["schedule"]
        table.add_row(rule["id"], rule["runbook"], rule["source"], rule["status"],
                      f"{schedule['cron']} ({schedule['timezone']})" if schedule else "",
                      f"{rule['file']}:{rule['line']}")
    console.print(table)
    for p in body["problems"]:
        err.print(styled((f"skipped: {p['file']}:{p['line']}:{p['column']}: {p['message']}", "yellow")),
                  highlight=False)


@triggers_app.command("test")
def test(
    payload: Annotated[Path, typer.Argument(help="A sample delivery: Alertmanager's JSON, or any JSON for generic.")],
    source: Annotated[str, typer.Option(help="alertmanager or generic:NAME.")] = "alertmanager",
    rules: Annotated[Path | None, typer.Option(help="A rules file to test instead of the server's rules.")] = None,
) -> None:
    """Which rules the payload matches and which runs would start, with their params. Creates nothing.
    Exit 1 when no run would start."""
    try:
        sample = orjson.loads(payload.read_bytes())
        rules_text = rules.read_text(encoding="utf-8") if rules else None
    except (OSError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        err.print(styled((f"cannot read {payload if rules is None else rules}: {exc}", "red")))
        raise typer.Exit(1) from None
    with cli_client() as client:
        body = client.post("/api/v1/triggers/test", json={"source": source, "payload": sample, "rules": rules_text})
    for result in body["results"]:
        alert = result["alert"]
        name = alert["labels"].get("alertname") or alert["fingerprint"]
        if not result["rules"]:
            err.print(f"{name} ({alert['status']}): no rule matches")
        for item in result["rules"]:
            line = f"{name} ({alert['status']}): rule {item['rule']} -> {item['runbook']}: {item['action']}"
            if item["action"] == "start run":
                if item.get("would_start"):
                    line += f" with {orjson.dumps(item['params']).decode()}"
                else:
                    line += f" REFUSED: {item.get('problem') or item.get('problems')}"
            console.print(Text(line))
    err.print(f"{body['alerts']} alert(s): {body['would_start']} run(s) would start")
    if not body["would_start"]:
        raise typer.Exit(1)


@triggers_app.command("validate")
def validate(
    directory: Annotated[Path | None, typer.Argument(help="Runbooks directory; default RUNBOOKD_RUNBOOKS_DIR.")] = None,
) -> None:
    """Every trigger rule under the directory (*.triggers.yaml and runbooks' triggers: blocks), with
    file:line:column for each problem; exit 1 on any error."""
    directory = directory or get_settings().runbooks_dir
    loaded = rules_mod.load(directory, load_directory(directory))
    for problem in loaded.problems:
        err.print(Text(str(problem), style="red" if problem.severity == "error" else "yellow"))
    files = len(list(directory.rglob(f"*{TRIGGER_SUFFIX}"))) if directory.is_dir() else 0
    summary = (f"{len(loaded.rules)} rule(s) from {files} trigger file(s) and the runbooks: "
               f"{len(loaded.errors)} error(s)")
    err.print(styled((summary, "red" if loaded.errors else "green")))
    if loaded.errors:
        raise typer.Exit(1)
