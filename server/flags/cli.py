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
from server.console import make_console, when

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
    until = f"; reverts at {when(pending[-1]['expires_at'])}" if pending else ""
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


CREATE_HINT = ("create it: runbookd flags create {key} --boolean (or --string/--number/--json with "
               "--variant name=value --off NAME)")


def _request(client: Any, method: str, path: str, key: str, **kwargs: Any) -> Any:
    """client.request, with a missing flag's error saying how to create it."""
    try:
        return client.request(method, path, **kwargs)
    except ClientError as exc:
        if exc.status == 404 and exc.message.startswith(f"no flag {key!r}") and "deleted" not in exc.message:
            raise ClientError(f"{exc.message}; {CREATE_HINT.format(key=key)}", 404) from None
        raise


def _set_env(key: str, env: str, change: dict[str, Any], meta: dict[str, Any], what: str) -> None:
    with cli_client() as client:
        flag = _request(client, "PATCH", f"/api/v1/flags/{key}", key, json={"environments": {env: change}, **meta})
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
                      when(pending[0]["expires_at"]) if pending else "-")
    console.print(table)


@flags_app.command("show")
def show(key: str) -> None:
    """Print a flag's whole configuration and pending expiries as JSON."""
    with cli_client() as client:
        flag = _request(client, "GET", f"/api/v1/flags/{key}", key, params={"include_deleted": True})
    print(json.dumps(flag, indent=2))


def _load(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise typer.BadParameter("the file must hold one flag as a YAML or JSON object", param_hint="--file")
    problems = yaml_boolean_names(data)
    if problems:
        raise typer.BadParameter(
            f"{', '.join(problems)}: YAML reads unquoted on/off/yes/no as true/false, so a variant named on or off "
            "must be quoted: variants: {\"on\": true, \"off\": false}, default_variant: \"off\"",
            param_hint="--file")
    return data


def yaml_boolean_names(data: dict[str, Any]) -> list[str]:
    """Where a variant name came out of YAML as a boolean (`on`, `off`, `yes`, `no` unquoted)."""
    found = []
    variants = data.get("variants")
    if isinstance(variants, dict):
        found += [f"variants: {k!r}" for k in variants if isinstance(k, bool)]
    for field in ("default_variant", "off_variant"):
        if isinstance(data.get(field), bool):
            found.append(f"{field}: {data[field]!r}")
    for env, state in (data.get("environments") or {}).items():
        if not isinstance(state, dict):
            continue
        if isinstance(state.get("default_variant"), bool):
            found.append(f"environments.{env}.default_variant: {state['default_variant']!r}")
        for i, rule in enumerate(state.get("rules") or []):
            if isinstance(rule, dict) and isinstance(rule.get("variant"), bool):
                found.append(f"environments.{env}.rules[{i}].variant: {rule['variant']!r}")
    return found


def _value(kind: str, text: str) -> Any:
    if kind == "string":
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise typer.BadParameter(f"{text!r} is not {'a number' if kind == 'number' else 'JSON'}",
                                 param_hint="--variant") from None
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise typer.BadParameter(f"{text!r} is not a number", param_hint="--variant")
    if kind == "object" and not isinstance(value, dict | list):
        raise typer.BadParameter(f"{text!r} is not a JSON object or list", param_hint="--variant")
    return value


@flags_app.command("create")
def create(
    key: str,
    boolean: Annotated[bool, typer.Option("--boolean", help="on = true, off = false; killed, it serves off.")]
    = False,
    string: Annotated[bool, typer.Option("--string", help="String variants from --variant name=value.")] = False,
    number: Annotated[bool, typer.Option("--number", help="Number variants from --variant name=value.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON object variants from --variant name='{...}'.")]
    = False,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="name=value; repeat for each.")]
    = None,
    default: Annotated[str | None, typer.Option("--default", help="Variant served when on (default: the first; "
                                                "for --boolean: on).")] = None,
    off: Annotated[str | None, typer.Option("--off", help="Variant served when off or killed (--boolean: off).")]
    = None,
    enabled: Annotated[bool, typer.Option("--enabled", help="Turn it on in every environment now.")] = False,
    description: Annotated[str, typer.Option(help="What it switches.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for more.")] = None,
    owner: Annotated[str | None, typer.Option(help="Who to ask about it.")] = None,
    reason: Reason = None, incident: Incident = None,
) -> None:
    """Create a flag without writing a file: `runbookd flags create new-checkout --boolean`."""
    kinds = [k for k, chosen in (("boolean", boolean), ("string", string), ("number", number), ("object", json_))
             if chosen]
    if len(kinds) != 1:
        raise typer.BadParameter("give exactly one of --boolean, --string, --number, --json", param_hint="type")
    kind = kinds[0]
    variants: dict[str, Any] = {}
    if kind == "boolean":
        variants = {"on": True, "off": False}
    for pair in variant or []:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: write --variant name=value", param_hint="--variant")
        variants[name] = (text.lower() == "true" if text.lower() in ("true", "false") else None) \
            if kind == "boolean" else _value(kind, text)
        if variants[name] is None:
            raise typer.BadParameter(f"{pair!r}: a boolean variant is true or false", param_hint="--variant")
    if not variants:
        raise typer.BadParameter(f"a {kind} flag needs its variants: --variant name=value (twice or more)",
                                 param_hint="--variant")
    if kind != "boolean" and off is None:
        raise typer.BadParameter(f"a {kind} flag must name the variant it serves when off or killed: --off NAME "
                                 f"(one of {', '.join(variants)})", param_hint="--off")
    body: dict[str, Any] = {"key": key, "type": kind, "variants": variants,
                            "default_variant": default or ("on" if kind == "boolean" and "on" in variants
                                                           else next(iter(variants))),
                            "enabled": enabled, "description": description, "tags": tag or [], "owner": owner,
                            **{k: v for k, v in _meta(reason, incident, None).items() if v is not None}}
    if off is not None:
        body["off_variant"] = off
    with cli_client() as client:
        flag = client.request("POST", "/api/v1/flags", json=body)
    serving = flag.get("serving") or {}
    states = "; ".join(f"{env} serves {_served(state)}" for env, state in serving.items())
    _said(flag, "created")
    turn_on = "" if enabled else f"Turn it on: runbookd flags on {key} --env production; "
    err.print(f"{states}. {turn_on}kill it: runbookd flag kill {key} --reason WHY", highlight=False)


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
            if exc.status == 404 and not file and exc.message.startswith("no flag"):
                raise ClientError(f"{exc.message}; {CREATE_HINT.format(key=key)}", 404) from None
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
        versions = _request(client, "GET", f"/api/v1/flags/{key}/versions", key)
    table = Table("version", "when", "action", "actor", "reason", "incident", "changed", "reverts at")
    for v in versions:
        changed = ", ".join(f"{op['op']} {op['path']}" for op in (v["diff"] or [])[:4])
        more = len(v["diff"] or []) - 4
        table.add_row(str(v["version"]), when(v["created_at"]), v["action"], v["actor"], v["reason"] or "-",
                      v["incident_id"] or "-", changed + (f" (+{more})" if more > 0 else ""),
                      when(v["expires_at"]))
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
