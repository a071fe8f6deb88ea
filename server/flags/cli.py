"""`runbookd flags ...` and `runbookd flag kill ...`: talk to a running server (RUNBOOKD_URL, RUNBOOKD_TOKEN)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from server.client import ClientError, cli_client
from server.console import make_console

flags_app = typer.Typer(help="Feature flags and kill switches on a running server (RUNBOOKD_URL, RUNBOOKD_TOKEN).",
                        no_args_is_help=True)
flag_app = typer.Typer(help="One-line kill switch: runbookd flag kill KEY --for 1h --reason ...",
                       no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)

Env = Annotated[str, typer.Option("--env", "-e", help="Environment.")]
For = Annotated[str | None, typer.Option("--for", help="Revert by itself after this long, e.g. 30m, 1h.")]
Reason = Annotated[str | None, typer.Option(help="Why; kept with the version and the audit event.")]
Incident = Annotated[str | None, typer.Option("--incident", help="Incident id this change belongs to.")]


def _meta(reason: str | None, incident: str | None, duration: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason, "incident_id": incident}
    if duration:
        body["for"] = duration
    return body


def _said(flag: dict[str, Any], what: str, env: str | None = None) -> None:
    pending = flag.get("pending_expiries") or []
    until = f"; reverts at {pending[-1]['expires_at']}" if pending else ""
    serves = ""
    if env is not None and (state := (flag.get("serving") or {}).get(env)) is not None:
        serves = f"; {env} serves {_served(state)}"
    err.print(f"flag {flag['key']!r} {what} (version {flag['version']}{until}){serves}", highlight=False)


def _served(state: dict[str, Any]) -> str:
    """'off = false (off variant)', the same words for every command."""
    value = json.dumps(state["value"])
    if not state["enabled"]:
        return f"{state['variant']} = {value} (off variant)"
    return f"{state['variant']} = {value}" + (" unless a rule matches" if state.get("rules") else "")


def _set_env(key: str, env: str, change: dict[str, Any], meta: dict[str, Any], what: str) -> None:
    with cli_client() as client:
        flag = client.request("PATCH", f"/api/v1/flags/{key}", json={"environments": {env: change}, **meta})
    _said(flag, what, env)


@flags_app.command("list")
def list_flags(
    tag: Annotated[str | None, typer.Option(help="Only flags with this tag.")] = None,
    include_deleted: Annotated[bool, typer.Option("--all", help="Include deleted flags.")] = False,
) -> None:
    """List flags with their state in each environment."""
    with cli_client() as client:
        params: dict[str, Any] = {"include_deleted": include_deleted}
        if tag:
            params["tag"] = tag
        flags = client.request("GET", "/api/v1/flags", params=params)
    table = Table("key", "type", "version", "environments", "tags", "owner", "reverts")
    for flag in flags:
        spec = flag["spec"]
        serving = flag.get("serving") or {}
        envs = " ".join(f"{name}:{'on' if state['enabled'] else 'off'}"
                        + (f"→{serving[name]['variant']}" if name in serving else "")
                        for name, state in sorted(spec["environments"].items()))
        pending = flag["pending_expiries"]
        table.add_row(flag["key"] + (" (deleted)" if flag["deleted"] else ""), spec["type"], str(flag["version"]),
                      envs, ",".join(spec["tags"]), spec.get("owner") or "-",
                      str(pending[0]["expires_at"])[:19] if pending else "-")
    console.print(table)


@flags_app.command("show")
def show(key: str) -> None:
    """Print a flag's whole configuration and pending expiries as JSON."""
    with cli_client() as client:
        flag = client.request("GET", f"/api/v1/flags/{key}", params={"include_deleted": True})
    print(json.dumps(flag, indent=2))


def _load(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise typer.BadParameter("the file must hold one flag as a YAML or JSON object", param_hint="--file")
    return data


@flags_app.command("set")
def set_flag(
    key: str,
    file: Annotated[str | None, typer.Option("--file", "-f", help="YAML/JSON flag (or the fields to change); "
                                             "'-' reads stdin. Creates the flag when it does not exist.")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Environment for --variant.")] = None,
    variant: Annotated[str | None, typer.Option(help="Serve this variant by default in --env.")] = None,
    duration: For = None, reason: Reason = None, incident: Incident = None,
    if_match: Annotated[int | None, typer.Option(help="Only if the flag is still at this version.")] = None,
) -> None:
    """Create or change a flag from a file, or set the default variant of one environment."""
    body: dict[str, Any] = _load(file) if file else {}
    if variant is not None:
        if env is None:
            raise typer.BadParameter("--variant needs --env", param_hint="--variant")
        body.setdefault("environments", {}).setdefault(env, {})["default_variant"] = variant
    if not body:
        raise typer.BadParameter("nothing to set: give --file or --env with --variant")
    body.update({k: v for k, v in _meta(reason, incident, duration).items() if v is not None})
    headers = {"If-Match": f'"{if_match}"'} if if_match is not None else None
    with cli_client() as client:
        try:
            changes = {k: v for k, v in body.items() if k != "key"}
            flag = client.request("PATCH", f"/api/v1/flags/{key}", json=changes, headers=headers)
            _said(flag, "changed")
        except ClientError as exc:
            if exc.status != 404 or not file:
                raise
            flag = client.request("POST", "/api/v1/flags", json={"key": key, **body})
            _said(flag, "created")


def _switch(enabled: bool) -> Callable[..., None]:
    def command(key: str, env: Env = "production", duration: For = None, reason: Reason = None,
                incident: Incident = None) -> None:
        _set_env(key, env, {"enabled": enabled}, _meta(reason, incident, duration),
                 f"turned {'on' if enabled else 'off'} in {env}")

    command.__doc__ = f"Turn a flag {'on' if enabled else 'off'} in one environment (optionally --for a while)."
    return command


flags_app.command("on")(_switch(True))
flags_app.command("off")(_switch(False))


def kill(
    key: str,
    reason: Annotated[str, typer.Option(help="Why; required for a kill switch.")],
    env: Env = "production", duration: For = None, incident: Incident = None,
) -> None:
    """Kill switch: turn a flag off now (for --for, then it comes back by itself)."""
    _set_env(key, env, {"enabled": False}, _meta(reason, incident, duration), f"killed in {env}")


flags_app.command("kill")(kill)
flag_app.command("kill")(kill)


@flags_app.command("history")
def history(key: str) -> None:
    """Every version of a flag, newest first, with who, why and what changed."""
    with cli_client() as client:
        versions = client.request("GET", f"/api/v1/flags/{key}/versions")
    table = Table("version", "when", "action", "actor", "reason", "incident", "changed", "reverts at")
    for v in versions:
        changed = ", ".join(f"{op['op']} {op['path']}" for op in (v["diff"] or [])[:4])
        more = len(v["diff"] or []) - 4
        table.add_row(str(v["version"]), str(v["created_at"])[:19], v["action"], v["actor"], v["reason"] or "-",
                      v["incident_id"] or "-", changed + (f" (+{more})" if more > 0 else ""),
                      str(v["expires_at"])[:19] if v["expires_at"] else "-")
    console.print(table)


@flags_app.command("rollback")
def rollback(
    key: str,
    to: Annotated[int, typer.Option("--to", help="Version to return to.")],
    reason: Reason = None, incident: Incident = None, duration: For = None,
) -> None:
    """Write a new version equal to version --to."""
    with cli_client() as client:
        flag = client.request("POST", f"/api/v1/flags/{key}/rollback",
                              json={"to_version": to, **_meta(reason, incident, duration)})
    _said(flag, f"rolled back to version {to}")
