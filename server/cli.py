"""The `runbookd` command: processes (up, api, worker, beat, migrate) and operator commands."""

from __future__ import annotations

import getpass
import importlib
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from server.auth.models import Actor, Role, Source
from server.console import make_console, print_error, styled, when
from server.flags.cli import flag_app, flags_app
from server.hooks.cli import hooks_app, triggers_app
from server.incidents.cli import incident_app
from server.loglevels.cli import loglevel_app
from server.runbooks.cli import runbooks_app
from server.runs.cli import run_command, runs_app
from server.settings import get_settings

app = typer.Typer(help="runbookd: debugging automation for on-call engineers.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
token_app = typer.Typer(help="Create, list and revoke API tokens (works on the database directly).",
                        no_args_is_help=True)
audit_app = typer.Typer(help="Verify and export the tamper-evident audit log.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
# Runbooks and runs: client commands that talk to a server over HTTP (runbooks validate works offline).
app.add_typer(runbooks_app, name="runbooks")
app.add_typer(runs_app, name="runs")
app.command("run")(run_command)
app.add_typer(flags_app, name="flags")
app.add_typer(flag_app, name="flag")
app.add_typer(loglevel_app, name="loglevel")
app.add_typer(incident_app, name="incident")
app.add_typer(hooks_app, name="hooks")
app.add_typer(triggers_app, name="triggers")
# server.console: markup off (server text often holds brackets) and soft_wrap, so messages stay on one line
# when piped and scripts and logs can grep them.
console = make_console()
err = make_console(stderr=True)


def _cli_actor() -> Actor:
    return Actor(name=f"cli:{getpass.getuser()}", role=Role.admin, source=Source.cli)


def _require_database() -> None:
    """Commands that open the database directly (token ...) say what to set when there is none, rather
    than creating an empty one (and a stray ./.runbookd) and failing with a traceback."""
    import os

    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from server.db import make_engine

    settings = get_settings()
    url = settings.effective_database_url
    where = ("RUNBOOKD_HOME is " + str(settings.home) if os.environ.get("RUNBOOKD_HOME")
             else f"RUNBOOKD_HOME is unset, so ./.runbookd under {Path.cwd()}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        print_error(err, f"no runbookd database at {parsed.database} ({where}). Set RUNBOOKD_HOME to the "
                         "directory `runbookd up` uses (`make up` in a clone: RUNBOOKD_HOME=<clone>/.runbookd), or "
                         "RUNBOOKD_DATABASE_URL to your database; start the server first if it never ran.")
        raise typer.Exit(1)
    try:
        engine = make_engine(url)
        try:
            ready = inspect(engine).has_table("api_tokens")
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        print_error(err, f"cannot open the database {parsed.render_as_string(hide_password=True)}: "
                         f"{str(exc).splitlines()[0]}; check RUNBOOKD_DATABASE_URL")
        raise typer.Exit(1) from None
    if not ready:
        print_error(err, f"the database {parsed.render_as_string(hide_password=True)} has no runbookd schema yet "
                         f"({where}): run `runbookd migrate`, or point RUNBOOKD_HOME / RUNBOOKD_DATABASE_URL "
                         "at the server's database")
        raise typer.Exit(1)


# -- processes -------------------------------------------------------------------------------------
@app.command()
def up() -> None:
    """Start the embedded stack: private redis, migrations, api, worker and beat. Ctrl-C stops it all."""
    from server.stack import run_stack

    raise typer.Exit(run_stack(get_settings()))


@app.command()
def demo(
    service_port: Annotated[int | None, typer.Option(help="faulty-service's port; default a free one.")] = None,
) -> None:
    """The embedded stack plus examples/faulty-service, its fault flags and the runbooks to try on it."""
    from server.demo import run_demo

    raise typer.Exit(run_demo(get_settings(), service_port))


@app.command()
def api(
    processes: Annotated[
        int | None, typer.Option(min=1, help="Processes sharing the port; default RUNBOOKD_API_PROCESSES.")
    ] = None,
) -> None:
    """Run the HTTP API (uvicorn) on RUNBOOKD_HOST:RUNBOOKD_PORT."""
    import uvicorn

    from server.app import create_app
    from server.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    count = processes or settings.api_processes
    # Several processes need the app by name (a factory); each builds it from the same environment.
    uvicorn.run(create_app(settings) if count == 1 else "server.app:create_app", factory=count > 1, workers=count,
                host=settings.host, port=settings.port, log_config=None, access_log=False, server_header=False)


def _celery_app() -> object:
    # The entry point is the one place that starts the workers package; the server never imports it.
    return importlib.import_module("workers.celery_app").app


@app.command()
def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated Celery queues; default RUNBOOKD_DEFAULT_QUEUE.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Worker processes; default RUNBOOKD_WORKER_CONCURRENCY.")
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. runbookd@db-host-1.")] = None,
) -> None:
    """Run a Celery worker that executes runs and steps."""
    settings = get_settings()
    argv = ["worker", f"--queues={queues or settings.default_queue}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--loglevel={settings.log_level}", "--without-gossip", "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    _celery_app().worker_main(argv)  # type: ignore[attr-defined]


@app.command()
def beat() -> None:
    """Run Celery beat: timed reverts (applied in beat itself), the reaper of dead runs, retention. Run exactly one."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    _celery_app().start(["beat", f"--loglevel={settings.log_level}",  # type: ignore[attr-defined]
                         f"--schedule={settings.home / 'celerybeat-schedule'}"])


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision (default: every head).")] = "heads",
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from server.migrate import upgrade

    upgrade(get_settings().effective_database_url, revision)
    err.print(f"database migrated to {revision}")


# -- tokens ----------------------------------------------------------------------------------------
@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Unique name; shows as the actor in the audit log.")],
    role: Annotated[str, typer.Option(help="client, hook, viewer, operator or admin.")] = "viewer",
    expires_in_days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
) -> None:
    """Create a token and print it once; only its SHA-256 hash is stored."""
    from pydantic import ValidationError

    from server.auth import service
    from server.auth.models import TokenCreate
    from server.db import session_scope
    from server.errors import DomainError

    try:
        body = TokenCreate.model_validate({"name": name, "role": role, "expires_in_days": expires_in_days})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        print_error(err, problems)
        raise typer.Exit(2) from None
    _require_database()
    try:
        with session_scope() as session:
            _t, raw = service.create_token(session, name=body.name, role=body.role, actor=_cli_actor(),
                                           expires_in_days=body.expires_in_days)
    except DomainError as exc:
        print_error(err, exc.message)
        raise typer.Exit(1) from None
    err.print(f"token {body.name!r} ({body.role.value}) created; it is shown only this once:")
    print(raw)


@token_app.command("list")
def token_list(include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False) -> None:
    """List tokens (never their secrets)."""
    from server.auth import service
    from server.db import session_scope

    _require_database()
    table = Table("id", "name", "role", "prefix", "created", "expires", "last used", "revoked")
    with session_scope() as session:
        for t in service.list_tokens(session, include_revoked=include_revoked):
            table.add_row(str(t.id), t.name, t.role, t.prefix + "...", _when(t.created_at), _when(t.expires_at),
                          _when(t.last_used_at), _when(t.revoked_at))
    console.print(table)


@token_app.command("revoke")
def token_revoke(ref: Annotated[str, typer.Argument(help="Token id or name.")]) -> None:
    """Revoke a token at once."""
    from server.auth import service
    from server.auth.token_cache import announce_revocation
    from server.db import session_scope
    from server.errors import DomainError
    from server.settings import get_settings

    _require_database()
    try:
        with session_scope() as session:
            token = service.revoke_token(session, ref=ref, actor=_cli_actor())
            name = token.name
            # Running api processes forget the token now rather than when their cache entry expires.
            announce_revocation(session, get_settings(), None, token.token_hash)
    except DomainError as exc:
        print_error(err, exc.message)
        raise typer.Exit(1) from None
    err.print(f"token {name!r} revoked")


def _when(value: object) -> str:
    return when(value)


# -- audit -----------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 naming the first event that was altered or removed."""
    from server.audit import service
    from server.db import session_scope

    with session_scope() as session:
        result = service.verify(session)
    if result.ok:
        err.print(styled(("audit log intact", "green"), f": {result.checked} events verified"))
        return
    err.print(styled(("audit log tampered", "bold red"),
                     f": {result.problem} ({result.checked} events verified before it)"))
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    format: Annotated[str, typer.Option("--format", help="Only jsonl for now.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")] = None,
) -> None:
    """Write every audit event, oldest first, one JSON object a line."""
    from server.audit import service
    from server.audit.models import AuditEventPublic
    from server.db import session_scope

    if format != "jsonl":
        print_error(err, f"unsupported --format {format!r}; use jsonl")
        raise typer.Exit(2)
    out = output.open("wb") if output else sys.stdout.buffer
    written = 0
    try:
        with session_scope() as session:
            for event in service.iter_events(session):
                public = AuditEventPublic.model_validate(event, from_attributes=True)
                out.write(orjson.dumps(public.model_dump(mode="json")))
                out.write(b"\n")
                written += 1
    finally:
        if output:
            out.close()
    err.print(f"{written} events exported")


@audit_app.command("prune")
def audit_prune(
    older_than: Annotated[str, typer.Option(help="Age of the events to remove, e.g. 90d.")],
    archive_dir: Annotated[Path | None, typer.Option(help="Default: $RUNBOOKD_HOME/audit-archive.")] = None,
) -> None:
    """Archive events older than --older-than to gzipped JSONL, then remove them (the chain stays verifiable)."""
    from server.audit.retention import prune
    from server.db import session_scope
    from server.durations import parse_duration
    from server.errors import DomainError

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        print_error(err, f"--older-than: {exc}")
        raise typer.Exit(2) from None
    try:
        with session_scope() as session:
            result = prune(session, older_than=age, actor=_cli_actor(),
                           archive_dir=archive_dir or get_settings().home / "audit-archive")
    except DomainError as exc:
        print_error(err, exc.message)
        raise typer.Exit(1) from None
    if result.removed:
        err.print(f"{result.removed} events through id {result.through_id} archived to {result.archive} and removed")
    else:
        err.print("nothing older than that")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
