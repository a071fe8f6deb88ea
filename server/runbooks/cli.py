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
