"""The receivers over real HTTP against a live api and a real database (SQLite and PostgreSQL): what starts,
what is refused, and that a redelivery starts nothing twice."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlmodel import select

from server.auth.models import Role
from server.db import session_scope
from server.hooks.models import HookDelivery, TriggerFiring
from server.hooks.security import sign
from server.runs.models import Run
from tests.server.hooks.conftest import GENERIC_SECRET, alert, payload, unique, write_rules
from tests.support import http


def probe_rule(rule_id: str, alertname: str, **extra: str) -> str:
    lines = [f"  - id: {rule_id}", "    runbook: probe", "    match:", f"      labels: {{alertname: {alertname}}}",
             "    params:", '      service: "{{ alert.labels.job }}"',
             '      instance: "{{ alert.labels.instance | default(\'none\') }}"']
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "triggers:\n" + "\n".join(lines) + "\n"


def runs_of(engine, rule_id: str) -> list[Run]:
    with session_scope(engine) as session:
        ids = session.exec(select(TriggerFiring.run_id).where(TriggerFiring.rule_id == rule_id,
                                                              TriggerFiring.action == "run")).all()
        return list(session.exec(select(Run).where(Run.id.in_(ids)).order_by(Run.id)))


def test_an_alert_starts_its_runbook_with_the_alerts_labels_as_params(hooks, hooks_dir, engine, admin_token):
    rule, name = unique(), unique("Alert")
    write_rules(hooks_dir, probe_rule(rule, name))
    response = hooks.alertmanager(payload([alert(name, job="checkout", instance="10.0.0.7:9100"),
                                           alert("SomethingElse", job="x")]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["alerts"], body["started"], body["ignored"]) == (2, 1, 1)
    [run] = runs_of(engine, rule)
    assert run.id == body["runs"][0]
    assert run.runbook_id == "probe" and run.params == {"service": "checkout", "instance": "10.0.0.7:9100",
                                                        "count": 1}
    assert run.actor == "hook:alertmanager" and run.status == "queued"
    with http(hooks.url, admin_token) as client:
        delivery = client.get(f"/api/v1/hooks/deliveries/{body['delivery_id']}").json()
        audit = client.get("/api/v1/audit", params={"action": "hook.delivery", "limit": 5}).json()
    assert delivery["source"] == "alertmanager" and delivery["actor"] == "hook:alertmanager"
    outcomes = {d["alertname"]: (d["outcome"], d["reason"]) for d in delivery["result"]["decisions"]}
    assert outcomes[name] == ("started", None)
    assert outcomes["SomethingElse"] == ("ignored", "no rule matched")
    assert any(e["actor"] == "hook:alertmanager" and str(e["target_id"]) == str(body["delivery_id"])
               for e in (audit["items"] if isinstance(audit, dict) else audit))


@pytest.mark.parametrize("role", [None, Role.viewer, Role.client])
def test_alertmanager_refuses_callers_that_may_not_trigger_runs(hooks, hooks_dir, make_token, engine, role):
    rule, name = unique(), unique("Alert")
    write_rules(hooks_dir, probe_rule(rule, name))
    token = make_token(role) if role else None
    response = hooks.alertmanager(payload([alert(name, job="a")]), token=token)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert runs_of(engine, rule) == []
    bad = hooks.alertmanager(payload([alert(name, job="a")]), token="rbd_not-a-real-token")
    assert bad.status_code == 401


def test_operator_and_admin_tokens_may_deliver_too(hooks, hooks_dir, make_token, engine):
    rule, name = unique(), unique("Alert")
    write_rules(hooks_dir, probe_rule(rule, name))
    for role in (Role.operator, Role.admin):
        response = hooks.alertmanager(payload([alert(name, job="a")]), token=make_token(role))
        assert response.status_code == 200 and response.json()["started"] == 1, response.text


def test_a_hook_token_can_do_nothing_else(hooks, hook_token):
    with http(hooks.url, hook_token) as client:
        for method, path, body in [
            ("GET", "/api/v1/runs", None), ("POST", "/api/v1/runs", {"runbook": "probe", "params": {"service": "a"}}),
            ("GET", "/api/v1/hooks/deliveries", None), ("GET", "/api/v1/runbooks", None),
            ("GET", "/api/v1/flags", None), ("GET", "/api/v1/incidents", None), ("GET", "/api/v1/audit", None),
            ("POST", "/api/v1/triggers/test", {"payload": payload([])}), ("GET", "/api/v1/tokens", None),
            ("POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "x"}}),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.status_code, response.text)
            assert "hook role" in response.json()["error"]["message"]


def test_five_concurrent_copies_of_one_delivery_start_each_run_once(hooks, hooks_dir, engine):
    rule, name = unique(), unique("Alert")
    write_rules(hooks_dir, probe_rule(rule, name))
    body = payload([alert(name, job=f"svc-{i}") for i in range(3)])
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _i: hooks.alertmanager(body), range(5)))
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert sum(a.json()["started"] for a in answers) == 3
    assert sum(a.json()["duplicates"] for a in answers) == 12
    runs = runs_of(engine, rule)
    assert len(runs) == 3 and len({r.params["service"] for r in runs}) == 3
    # Alertmanager re-sending later is a duplicate too.
    again = hooks.alertmanager(body).json()
    assert (again["started"], again["duplicates"]) == (0, 3)


def test_generic_hook_signed_with_its_secret_starts_a_run(hooks, hooks_dir, engine):
    rule = unique()
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    source: generic:ci
    match: {{labels: {{pipeline: {rule}}}}}
    params: {{service: "{{{{ payload.service }}}}", count: "{{{{ payload.failures }}}}"}}
""")
    doc = {"pipeline": rule, "service": "deploy-bot", "failures": 3, "status": "firing"}
    response = hooks.generic("ci", doc)
    assert response.status_code == 200, response.text
    assert response.json()["started"] == 1
    [run] = runs_of(engine, rule)
    assert run.params["service"] == "deploy-bot" and run.params["count"] == 3
    assert run.actor == "hook:generic:ci"


def test_generic_hook_refuses_forged_stale_replayed_and_unknown(hooks, hooks_dir, engine):
    rule = unique()
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    source: generic:ci
    match: {{labels: {{pipeline: {rule}}}}}
    params: {{service: ci}}
""")
    doc = {"pipeline": rule, "n": 1}
    forged = hooks.generic("ci", doc, secret="not-the-secret")
    stale = hooks.generic("ci", doc, timestamp=int(time.time()) - 3600)
    future = hooks.generic("ci", doc, timestamp=int(time.time()) + 3600)
    garbage = hooks.generic("ci", doc, signature="v0=00")
    unknown = hooks.generic("nope", doc)
    unsigned = httpx.post(f"{hooks.url}/hooks/generic/ci", json=doc, timeout=10)
    superscript = httpx.post(f"{hooks.url}/hooks/generic/ci", content=b"{}", timeout=10,  # '²'.isdigit() is True
                             headers={"X-Runbookd-Timestamp": "\u00b2".encode("latin-1"),
                                      "X-Runbookd-Signature": "v0=00"})
    for response, why in [(forged, "signature does not match"), (stale, "stale"), (future, "stale"),
                          (superscript, "stale"),
                          (garbage, "signature does not match"), (unknown, "no such hook"),
                          (unsigned, "X-Runbookd-Signature")]:
        assert response.status_code == 401, response.text
        assert why in response.json()["error"]["message"]
    # A body changed after signing is a forgery too.
    ts = str(int(time.time()))
    tampered = httpx.post(f"{hooks.url}/hooks/generic/ci", content=b'{"pipeline": "other"}', timeout=10,
                          headers={"X-Runbookd-Timestamp": ts, "X-Runbookd-Signature": sign(GENERIC_SECRET, ts, b"{}")})
    assert tampered.status_code == 401
    assert runs_of(engine, rule) == []
    first = hooks.generic("ci", doc, timestamp=int(time.time()))
    assert first.status_code == 200 and first.json()["started"] == 1
    replay = httpx.post(f"{hooks.url}/hooks/generic/ci", content=first.request.content, headers=first.request.headers,
                        timeout=10)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]
    assert len(runs_of(engine, rule)) == 1


def test_generic_hook_takes_a_hook_token_for_a_hook_some_rule_names(hooks, hooks_dir, hook_token, make_token, engine):
    rule = unique()
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    source: generic:uptime
    params: {{service: "{{{{ payload.check }}}}"}}
""")
    with http(hooks.url, hook_token) as client:
        ok = client.post("/hooks/generic/uptime", json={"check": "homepage"})
        unknown = client.post("/hooks/generic/not-a-hook", json={"check": "homepage"})
    assert ok.status_code == 200 and ok.json()["started"] == 1, ok.text
    assert unknown.status_code == 401 and "no hook" in unknown.json()["error"]["message"]
    with http(hooks.url, make_token(Role.viewer)) as viewer:
        assert viewer.post("/hooks/generic/uptime", json={"check": "x"}).status_code == 401
    assert len(runs_of(engine, rule)) == 1


def test_oversized_and_malformed_deliveries_are_refused_and_write_nothing(hooks, hooks_dir, engine):
    rule, name = unique(), unique("Alert")
    write_rules(hooks_dir, probe_rule(rule, name))
    with session_scope(engine) as session:
        before = len(session.exec(select(HookDelivery.id)).all())
    big = payload([alert(name, job="a", padding="x" * 1024) for _ in range(2100)])
    too_big = hooks.alertmanager(big)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit holds while streaming too
        yield b'{"version": "4", "alerts": ['
        for _ in range(3000):
            yield b'{"status": "firing", "labels": {"a": "' + b"x" * 1000 + b'"}},'
        yield b"{}]}"

    streamed = httpx.post(
        f"{hooks.url}/hooks/alertmanager", content=chunks(), timeout=30,
        headers={"Authorization": f"Bearer {hooks.token}", "Content-Type": "application/json"})
    assert streamed.status_code == 413
    for bad, needle in [(b"not json", "not JSON"), (b'{"version": "3", "groupKey": "g", "status": "firing", '
                                                     b'"alerts": []}', "version"),
                        (b'{"version": "4", "alerts": [{"status": "on fire"}]}', "Alertmanager")]:
        response = hooks.alertmanager(bad)
        assert response.status_code == 422, response.text
        assert needle in response.json()["error"]["message"]
    with session_scope(engine) as session:
        assert len(session.exec(select(HookDelivery.id)).all()) == before
    assert runs_of(engine, rule) == []
