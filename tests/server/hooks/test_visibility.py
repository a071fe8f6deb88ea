"""What deliveries did, over the API and the CLI; `triggers test` says what would start and creates nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlmodel import func, select

from server.auth.models import Role
from server.db import session_scope
from server.hooks.models import HookDelivery
from server.runs.models import Run
from tests.server.hooks.conftest import alert, payload, unique, write_rules
from tests.support import http


def cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
    env.update(RUNBOOKD_URL=url, RUNBOOKD_TOKEN=token, RUNBOOKD_CONFIG="/nonexistent")
    return subprocess.run([sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def counts(engine) -> tuple[int, int]:
    with session_scope(engine) as session:
        return (session.exec(select(func.count()).select_from(HookDelivery)).one(),
                session.exec(select(func.count()).select_from(Run)).one())


RULE = """triggers:
  - id: {rule}
    runbook: probe
    match: {{labels: {{alertname: {name}, severity: {{in: [page, critical]}}}}}}
    params: {{service: "{{{{ alert.labels.job }}}}", count: "{{{{ alert.labels.n }}}}"}}
    open_incident: {{title: "{{{{ alert.annotations.summary }}}}"}}
"""


def test_triggers_test_says_what_would_start_and_creates_nothing(hooks, hooks_dir, engine, make_token, tmp_path):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, RULE.format(rule=rule, name=name))
    sample = payload([alert(name, job="api", n="4", severity="page"), alert(name, job="api", n="400", severity="page"),
                      alert(name, job="api", n="1", severity="info")])
    before = counts(engine)
    operator = make_token(Role.operator)
    with http(hooks.url, operator) as client:
        body = client.post("/api/v1/triggers/test", json={"payload": sample}).json()
        bad_rules = client.post("/api/v1/triggers/test", json={"payload": sample, "rules": "triggers: [{id: x}]"})
        bad_payload = client.post("/api/v1/triggers/test", json={"payload": {"alerts": "no"}})
    with http(hooks.url, make_token(Role.viewer)) as viewer:
        assert viewer.post("/api/v1/triggers/test", json={"payload": sample}).status_code == 403
    assert counts(engine) == before
    assert body["would_start"] == 1
    first, second, third = body["results"]
    assert first["rules"] == [{"rule": rule, "runbook": "probe", "action": "start run", "would_start": True,
                               "params": {"service": "api", "instance": "unknown", "count": 4}, "problems": None,
                               "incident": {"severity": "sev3", "title": f"{name} is firing"}}]
    assert second["rules"][0]["would_start"] is False
    assert second["rules"][0]["problems"][0]["message"] == "400 is above the maximum 100"
    assert third["rules"] == []
    assert bad_rules.status_code == 422 and "1:" in bad_rules.json()["error"]["message"]
    assert bad_payload.status_code == 422 and "Alertmanager" in bad_payload.json()["error"]["message"]

    sample_file = tmp_path / "sample.json"
    sample_file.write_text(json.dumps(sample))
    shown = cli(hooks.url, operator, "triggers", "test", str(sample_file))
    assert shown.returncode == 0, shown.stderr
    assert f"rule {rule} -> probe: start run with" in shown.stdout and '"count":4' in shown.stdout
    assert "REFUSED" in shown.stdout and "3 alert(s): 1 run(s) would start" in shown.stderr
    assert counts(engine) == before


def test_deliveries_are_listed_by_api_and_cli(hooks, hooks_dir, engine, make_token):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, RULE.format(rule=rule, name=name))
    hooks.alertmanager(payload([alert(name, job="older", n="1", severity="info")]))
    delivered = hooks.alertmanager(payload([alert(name, job="api", n="2", severity="page"),
                                            alert(name, job="web", n="2", severity="info")])).json()
    viewer = make_token(Role.viewer)
    with http(hooks.url, viewer) as client:
        page = client.get("/api/v1/hooks/deliveries", params={"source": "alertmanager", "limit": 1}).json()
        assert client.get("/api/v1/hooks/deliveries", params={"cursor": "x"}).status_code == 422
        assert client.get("/api/v1/hooks/deliveries/999999999").status_code == 404
        triggers = client.get("/api/v1/triggers").json()
    [row] = page["items"]
    assert row["id"] == delivered["delivery_id"] and page["next_cursor"] is not None
    assert (row["alerts"], row["started"], row["ignored"], row["token"]) == (2, 1, 1, row["token"])
    assert row["token"].startswith("hook-")
    assert any(r["id"] == rule and r["runbook"] == "probe" for r in triggers["rules"])
    listed = cli(hooks.url, viewer, "hooks", "deliveries", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    assert str(delivered["delivery_id"]) in listed.stdout and str(delivered["runs"][0]) in listed.stdout
    shown = cli(hooks.url, viewer, "hooks", "show", str(delivered["delivery_id"]))
    assert shown.returncode == 0 and "started" in shown.stdout and "no rule matched" in shown.stdout, shown.stdout


def test_triggers_validate_reports_positions_offline(tmp_path):
    from tests.server.hooks.conftest import PROBE

    (tmp_path / "probe.yaml").write_text(PROBE)
    (tmp_path / "x.triggers.yaml").write_text("triggers:\n  - id: a\n    runbook: probe\n    params: {sevice: x}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
    done = subprocess.run([sys.executable, "-m", "server.cli", "triggers", "validate", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{tmp_path}/x.triggers.yaml:4:14: error: runbook 'probe' has no param 'sevice'" in done.stderr
