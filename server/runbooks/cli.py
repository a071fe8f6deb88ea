"""`runbookd runbooks validate|list|reload`: validate works offline, the others ask a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from server.client import Client, ClientError
from server.console import make_console, print_error, styled
from server.runbooks.validation import check_text

runbooks_app = typer.Typer(help="Validate runbook files (offline), list and reload a server's runbooks.",
                           no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    return out


@runbooks_app.command("validate")
def validate(paths: Annotated[list[Path], typer.Argument(help="Runbook files or directories of *.yaml.")]) -> None:
    """Report every error and warning, with file:line:column; exit 1 when any file has an error."""
    errors = warnings = 0
    files = _files(paths)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"{path}:1:1: error: cannot read the file: {exc}")
            errors += 1
            continue
        checked = check_text(text, str(path))
        for problem in checked.problems:
            colour = "red" if problem.severity == "error" else "yellow"
            err.print(Text(str(problem), style=colour))
        errors += len(checked.errors)
        warnings += len(checked.warnings)
    summary = f"{len(files)} file(s): {errors} error(s), {warnings} warning(s)"
    err.print(styled((summary, "red" if errors else "green")))
    if errors or not files:
        raise typer.Exit(1)


def _print_list(body: dict[str, Any]) -> None:
    table = Table("id", "title", "source", "tags")
    for item in body["items"]:
        table.add_row(item["id"], item["title"], item["source"], ", ".join(item["tags"]))
    console.print(table)
    for problem in body["problems"]:
        err.print(styled((f"skipped: {problem['file']}:{problem['line']}:{problem['column']}: {problem['message']}",
                          "yellow")), highlight=False)


@runbooks_app.command("list")
def list_runbooks() -> None:
    """The runbooks a server offers, and the files it skipped."""
    try:
        with Client() as client:
            _print_list(client.request("GET", "/api/v1/runbooks"))
    except ClientError as exc:
        print_error(err, exc.message)
        raise typer.Exit(1) from None


@runbooks_app.command("reload")
def reload() -> None:
    """Make the server re-read RUNBOOKD_RUNBOOKS_DIR now (it also notices changes by itself). Admin."""
    try:
        with Client() as client:
            _print_list(client.request("POST", "/api/v1/runbooks/reload"))
    except ClientError as exc:
        print_error(err, exc.message)
        raise typer.Exit(1) from None


PHASE_ORDER = ("reproduce", "observe", "hypothesize", "test", "fix", "verify", None)


@runbooks_app.command("show")
def show(runbook_id: str) -> None:
    """One runbook: its params with types and defaults, its steps by phase, and how to run it."""
    try:
        with Client() as client:
            rb = client.request("GET", f"/api/v1/runbooks/{runbook_id}")
    except ClientError as exc:
        hint = "; `runbookd runbooks list` shows them" if exc.status == 404 else ""
        print_error(err, exc.message + hint)
        raise typer.Exit(1) from None
    console.print(Text.assemble((rb["id"], "bold"), f": {rb['title']}"))
    if rb.get("description"):
        console.print(rb["description"].strip(), highlight=False)
    extra = [f"timeout {rb['timeout']}" if rb.get("timeout") else "",
             f"at most {rb['concurrency']} at once" if rb.get("concurrency") else "",
             f"on failure: {rb['on_failure']}"]
    console.print("; ".join(e for e in extra if e), highlight=False)
    params = Table("param", "type", "required", "default", "description", title="params")
    for name, spec in rb["params"].items():
        kind = spec.get("type", "string") + (f" ({'|'.join(map(str, spec['choices']))})" if spec.get("choices")
                                             else "") + (" secret" if spec.get("secret") else "")
        limits = [f"pattern {spec['pattern']}" if spec.get("pattern") else "",
                  f">= {spec['minimum']:g}" if spec.get("minimum") is not None else "",
                  f"<= {spec['maximum']:g}" if spec.get("maximum") is not None else ""]
        note = "; ".join(x for x in [spec.get("description") or "", *limits] if x)
        params.add_row(name, kind, "yes" if spec.get("required") else "no",
                       "-" if "default" not in spec else str(spec["default"]), note)
    if rb["params"]:
        console.print(params)
    else:
        console.print("params: none")
    steps = Table("phase", "step", "uses", "title", "note", title="steps by phase")
    by_phase = sorted(enumerate(rb["steps"]), key=lambda p: (PHASE_ORDER.index(p[1].get("phase"))
                                                            if p[1].get("phase") in PHASE_ORDER else 6, p[0]))
    for _i, step in by_phase:
        note = ", ".join(x for x in ["needs approval" if step.get("approval") else "",
                                     f"runs on {step['on']}" if step.get("on") else ""] if x)
        steps.add_row(step.get("phase") or "-", step["id"], step["uses"], step.get("title") or "", note)
    console.print(steps)
    if rb.get("outputs"):
        console.print("outputs: " + ", ".join(rb["outputs"]), highlight=False)
    needed = [f"{n}=..." for n, s in rb["params"].items() if s.get("required")]
    console.print(f"run it: runbookd run {rb['id']} {' '.join(needed)} --follow".replace("  ", " "),
                  highlight=False)


@runbooks_app.command("reference")
def reference() -> None:
    """Print the runbook reference (every step kind's inputs and outputs) as Markdown: docs/runbooks.md."""
    from server.runbooks.reference import render

    print(render(), end="")
