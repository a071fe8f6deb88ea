"""The flags CLI against a live server, as an operator types it."""

from __future__ import annotations

import json
import subprocess

from tests.server.flags.conftest import new_key
from tests.support import cli, http


def runbookd(base_url: str, token: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli(list(args), {"RUNBOOKD_URL": base_url, "RUNBOOKD_TOKEN": token, "RUNBOOKD_CONFIG": "/nonexistent"},
               stdin=stdin)


def test_set_on_kill_history_rollback(base_url, operator_token, client_token, tmp_path, make_incident):
    inc = make_incident()
    key = new_key("cli")
    spec = tmp_path / "flag.yaml"
    spec.write_text(f"key: {key}\ntype: string\nvariants: {{old: v1, new: v2}}\ndefault_variant: old\n"
                    "off_variant: old\ntags: [pricing]\n")
    created = runbookd(base_url, operator_token, "flags", "set", key, "--file", str(spec), "--reason", "new flag")
    assert created.returncode == 0, created.stderr
    assert "created" in created.stderr and "version 1" in created.stderr

    on = runbookd(base_url, operator_token, "flags", "on", key, "--env", "production")
    assert on.returncode == 0 and "turned on in production (version 2" in on.stderr
    variant = runbookd(base_url, operator_token, "flags", "set", key, "--env", "production", "--variant", "new")
    assert variant.returncode == 0, variant.stderr
    with http(base_url, client_token) as client:
        assert client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}).json()["value"] == "v2"

    killed = runbookd(base_url, operator_token, "flag", "kill", key, "--for", "1h", "--reason", f"{inc} errors",
                      "--incident", inc)
    assert killed.returncode == 0, killed.stderr
    assert "killed in production (version 4; reverts at" in killed.stderr
    assert "production serves old = \"v1\" (off variant)" in killed.stderr
    with http(base_url, client_token) as client:
        served = client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}).json()
        assert (served["reason"], served["variant"], served["value"]) == ("DISABLED", "old", "v1")

    listed = runbookd(base_url, operator_token, "flags", "list", "--tag", "pricing")
    assert listed.returncode == 0 and key in listed.stdout and "production:off→old" in listed.stdout
    shown = json.loads(runbookd(base_url, operator_token, "flags", "show", key).stdout)
    assert shown["version"] == 4 and shown["pending_expiries"][0]["revert_to"] == 3

    history = runbookd(base_url, operator_token, "flags", "history", key)
    assert history.returncode == 0
    assert f"{inc} errors" in history.stdout and "replace /environments/production/enabled" in history.stdout

    back = runbookd(base_url, operator_token, "flags", "rollback", key, "--to", "3", "--reason", "fixed")
    assert back.returncode == 0 and "rolled back to version 3 (version 5)" in back.stderr
    with http(base_url, client_token) as client:
        assert client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}).json()["value"] == "v2"


def test_errors_are_clear(base_url, operator_token, client_token):
    missing = runbookd(base_url, operator_token, "flags", "on", "no-such-flag")
    assert missing.returncode == 1 and "no flag 'no-such-flag'" in missing.stderr
    refused = runbookd(base_url, "rbd_not-a-token", "flags", "list")
    assert refused.returncode == 1 and "refused the token" in refused.stderr
    forbidden = runbookd(base_url, client_token, "flags", "list")
    assert forbidden.returncode == 1 and "not allowed" in forbidden.stderr
    nobody = runbookd("http://127.0.0.1:9", operator_token, "flags", "list")
    assert nobody.returncode == 1 and "cannot reach runbookd" in nobody.stderr
    no_reason = runbookd(base_url, operator_token, "flag", "kill", "x")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr


def test_create_from_the_command_line(base_url, operator_token, client_token):
    key = new_key("create")
    made = runbookd(base_url, operator_token, "flags", "create", key, "--boolean", "--reason", "new")
    assert made.returncode == 0, made.stderr
    assert "created (version 1)" in made.stderr and "production serves off = false (off variant)" in made.stderr
    flag = json.loads(runbookd(base_url, operator_token, "flags", "show", key).stdout)
    assert flag["spec"]["variants"] == {"on": True, "off": False} and flag["spec"]["off_variant"] == "off"
    assert flag["spec"]["default_variant"] == "on"

    pricing = new_key("create")
    made = runbookd(base_url, operator_token, "flags", "create", pricing, "--string", "--variant", "old=v1",
                    "--variant", "new=v2", "--default", "new", "--off", "old", "--enabled")
    assert made.returncode == 0, made.stderr
    with http(base_url, client_token) as client:
        assert client.post(f"/ofrep/v1/evaluate/flags/{pricing}", json={}).json()["value"] == "v2"
    number = new_key("create")
    assert runbookd(base_url, operator_token, "flags", "create", number, "--number", "-v", "low=1", "-v",
                    "high=2.5", "--off", "low").returncode == 0
    obj = new_key("create")
    done = runbookd(base_url, operator_token, "flags", "create", obj, "--json", "-v", 'lite={"limit": 1}', "-v",
                    'full={"limit": 10}', "--off", "lite")
    assert done.returncode == 0, done.stderr

    no_off = runbookd(base_url, operator_token, "flags", "create", new_key(), "--string", "-v", "a=x")
    assert no_off.returncode == 2 and "must name the variant it serves when off" in no_off.stderr
    not_number = runbookd(base_url, operator_token, "flags", "create", new_key(), "--number", "-v", "a=x",
                          "--off", "a")
    assert not_number.returncode == 2 and "'x' is not a number" in not_number.stderr
    two_types = runbookd(base_url, operator_token, "flags", "create", new_key(), "--boolean", "--string")
    assert two_types.returncode == 2 and "exactly one of" in two_types.stderr


def test_a_missing_flag_says_how_to_create_it_and_yaml_booleans_get_a_hint(base_url, operator_token, tmp_path):
    for args in (["flags", "on", "no-such-flag"], ["flags", "show", "no-such-flag"],
                 ["flag", "kill", "no-such-flag", "--reason", "x"], ["flags", "history", "no-such-flag"]):
        missing = runbookd(base_url, operator_token, *args)
        assert missing.returncode == 1 and "create it: runbookd flags create no-such-flag --boolean" in \
            missing.stderr, (args, missing.stderr)
    spec = tmp_path / "flag.yaml"
    spec.write_text("type: boolean\nvariants: {on: true, off: false}\ndefault_variant: off\n")
    hinted = runbookd(base_url, operator_token, "flags", "set", new_key(), "--file", str(spec))
    assert hinted.returncode == 2, hinted.stderr
    assert "YAML reads unquoted on/off/yes/no as true/false" in hinted.stderr and "variants: True" in hinted.stderr
