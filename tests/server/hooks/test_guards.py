"""Guards keep an alert storm from becoming a run storm; incidents open per alert group and close with it;
a run's summary is posted when it ends. All over real HTTP against a live api and a real database."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import orjson
from sqlmodel import select

from server.auth.models import Actor, Role, Source
from server.chat.followups import post_due
from server.db import session_scope
from server.runs import service as runs
from server.runs.models import Run
from tests.server.hooks.conftest import alert, payload, unique, write_rules
from tests.server.hooks.test_receivers import runs_of
from tests.support import http

OPERATOR = Actor(name="pytest-op", role=Role.operator, source=Source.cli)


def rule_file(rule: str, name: str, extra: str = "") -> str:
    return f"""triggers:
  - id: {rule}
    runbook: probe
    match: {{labels: {{alertname: {name}}}}}
    params: {{service: "{{{{ alert.labels.job }}}}"}}
{extra}"""


def cancel_all(engine, rule: str, settings) -> None:
    with session_scope(engine) as session:
        for run in runs_of(engine, rule):
            if run.status == "queued":
                runs.cancel(session, run_id=run.id, actor=OPERATOR, reason="test", settings=settings, client=None)


def decisions(hooks, admin_token, delivery_id: int) -> list[dict]:
    with http(hooks.url, admin_token) as client:
        return client.get(f"/api/v1/hooks/deliveries/{delivery_id}").json()["result"]["decisions"]


def test_dedupe_holds_one_run_per_fingerprint_while_active_and_within_cooldown(hooks, hooks_dir, engine, admin_token,
                                                                               hook_settings):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule, name, "    cooldown: 0s\n"))
    first = hooks.alertmanager(payload([alert(name, job="a", fingerprint="fp1", starts_at="2026-12-02T01:00:00Z")]))
    assert first.json()["started"] == 1
    # Same alert, new startsAt (it flapped): the run for it is still queued, so nothing new starts.
    again = hooks.alertmanager(payload([alert(name, job="a", fingerprint="fp1", starts_at="2026-12-02T01:05:00Z")]))
    assert (again.json()["started"], again.json()["suppressed"]) == (0, 1)
    [why] = [d["reason"] for d in decisions(hooks, admin_token, again.json()["delivery_id"])]
    assert why.startswith("dedupe: run ") and "still queued" in why
    cancel_all(engine, rule, hook_settings)
    third = hooks.alertmanager(payload([alert(name, job="a", fingerprint="fp1", starts_at="2026-12-02T01:10:00Z")]))
    assert third.json()["started"] == 1  # cooldown 0s and the earlier run ended

    rule2, name2 = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule2, name2, "    cooldown: 1h\n"))
    assert hooks.alertmanager(payload([alert(name2, job="a", fingerprint="fp2", starts_at="t1")])).json()["started"]
    cancel_all(engine, rule2, hook_settings)
    later = hooks.alertmanager(payload([alert(name2, job="a", fingerprint="fp2", starts_at="t2")])).json()
    assert later["suppressed"] == 1
    [why] = [d["reason"] for d in decisions(hooks, admin_token, later["delivery_id"])]
    assert "within the cooldown (1h)" in why


def test_max_concurrent_and_max_runs_per_minute_suppress_with_the_reason(hooks, hooks_dir, engine, admin_token,
                                                                         hook_settings):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule, name, "    max_concurrent: 2\n"))
    body = hooks.alertmanager(payload([alert(name, job=f"j{i}") for i in range(5)])).json()
    assert (body["started"], body["suppressed"]) == (2, 3)
    reasons = {d["reason"] for d in decisions(hooks, admin_token, body["delivery_id"]) if d["outcome"] == "suppressed"}
    assert reasons == {f"max_concurrent: 2 runs of rule {rule} are already active"}
    cancel_all(engine, rule, hook_settings)  # finished runs no longer count
    assert hooks.alertmanager(payload([alert(name, job="k")])).json()["started"] == 1

    rule2, name2 = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule2, name2, "    max_runs_per_minute: 3\n"))
    body = hooks.alertmanager(payload([alert(name2, job=f"j{i}") for i in range(5)])).json()
    assert (body["started"], body["suppressed"]) == (3, 2)
    cancel_all(engine, rule2, hook_settings)
    body = hooks.alertmanager(payload([alert(name2, job="late")])).json()  # ended, but still this minute
    assert body["suppressed"] == 1
    [why] = [d["reason"] for d in decisions(hooks, admin_token, body["delivery_id"])]
    assert why == f"max_runs_per_minute: rule {rule2} started 3 runs in the last minute"
    assert len(runs_of(engine, rule2)) == 3


def test_invalid_rendered_params_start_nothing_and_say_why(hooks, hooks_dir, engine, admin_token):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    match: {{labels: {{alertname: {name}}}}}
    params: {{service: "{{{{ alert.labels.job }}}}", count: "{{{{ alert.labels.count }}}}"}}
  - id: {rule}-huge
    runbook: probe
    match: {{labels: {{alertname: {name}}}}}
    params: {{service: "{{{{ alert.labels.job * 1000000 }}}}"}}
""")
    body = hooks.alertmanager(payload([alert(name, job="Not Valid!", count="3"), alert(name, job="ok", count="500"),
                                       alert(name, job="ok2")])).json()
    assert body["started"] == 0 and body["ignored"] == 6
    found = [(d["rule"], d["reason"]) for d in decisions(hooks, admin_token, body["delivery_id"])]
    assert any(r == rule and "params.service: 'Not Valid!' does not match the pattern" in why for r, why in found)
    assert any(r == rule and "params.count: 500 is above the maximum 100" in why for r, why in found)
    assert any(r == rule and "param count" in why and "no attribute 'count'" in why for r, why in found), found
    huge = {why for r, why in found if r == f"{rule}-huge"}
    assert huge and all(why.startswith("params: param service: * would make a value of")
                        and why.endswith("(at most 1,000,000)") for why in huge), huge
    assert runs_of(engine, rule) == [] and runs_of(engine, f"{rule}-huge") == []


def test_an_alert_group_opens_one_incident_and_resolving_closes_it(hooks, hooks_dir, engine, admin_token):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule, name, """    open_incident:
      severity: sev2
      title: "{{ alert.labels.alertname }} on {{ alert.labels.job }}"
    on_resolved: resolve_incident
"""))
    group = f'{{}}:{{alertname="{name}"}}'
    first = hooks.alertmanager(payload([alert(name, job="a", fingerprint="f1"), alert(name, job="b", fingerprint="f2")],
                                       group_key=group)).json()
    more = hooks.alertmanager(payload([alert(name, job="c", fingerprint="f3")], group_key=group)).json()
    assert first["started"] == 2 and more["started"] == 1
    incidents = {r.incident_id for r in runs_of(engine, rule)}
    assert len(incidents) == 1 and None not in incidents
    [key] = incidents
    with http(hooks.url, admin_token) as client:
        incident = client.get(f"/api/v1/incidents/{key}").json()
        assert (incident["severity"], incident["title"], incident["status"]) == ("sev2", f"{name} on a", "open")
        resolved = hooks.alertmanager(payload([alert(name, job="a", fingerprint="f1", status="resolved")],
                                              group_key=group, status="resolved")).json()
        assert resolved["started"] == 0
        # f2 and f3 still fire: the incident stays open, and says so.
        assert client.get(f"/api/v1/incidents/{key}").json()["status"] == "open"
        [kept] = decisions(hooks, admin_token, resolved["delivery_id"])
        assert kept["reason"] == f"{key} stays open: 2 other alert(s) of its group still firing"
        rest = hooks.alertmanager(payload([alert(name, job="b", fingerprint="f2", status="resolved"),
                                           alert(name, job="c", fingerprint="f3", status="resolved")],
                                          group_key=group, status="resolved")).json()
        assert [d["reason"] for d in decisions(hooks, admin_token, rest["delivery_id"])] == [
            f"{key} stays open: 1 other alert(s) of its group still firing", f"{key} resolved"]
        incident = client.get(f"/api/v1/incidents/{key}").json()
        timeline = client.get(f"/api/v1/incidents/{key}/timeline").json()
    assert incident["status"] == "resolved"
    actions = [e["action"] for e in timeline]
    assert "incident.resolved" in actions and "alert.resolved" in actions
    assert any(e["action"] == "alert.resolved" and e["actor"] == "hook:alertmanager" for e in timeline)
    # The next firing of the group opens a new incident: the old one is resolved.
    after = hooks.alertmanager(payload([alert(name, job="d", fingerprint="f4")], group_key=group)).json()
    assert after["started"] == 1
    assert len({r.incident_id for r in runs_of(engine, rule)}) == 2


def test_on_resolved_cancel_run_and_note(hooks, hooks_dir, engine, admin_token):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule, name, "    on_resolved: cancel_run\n"))
    hooks.alertmanager(payload([alert(name, job="a", fingerprint="c1")]))
    done = hooks.alertmanager(payload([alert(name, job="a", fingerprint="c1", status="resolved")])).json()
    [run] = runs_of(engine, rule)
    assert run.status == "cancelled" and run.cancelled_by == "hook:alertmanager"
    [d] = decisions(hooks, admin_token, done["delivery_id"])
    assert (d["outcome"], d["reason"]) == ("cancel_run", f"run {run.id} cancelled")

    rule2, name2 = unique(), unique("A")
    write_rules(hooks_dir, rule_file(rule2, name2, "    on_resolved: note\n"))
    hooks.alertmanager(payload([alert(name2, job="a", fingerprint="n1")]))
    body = payload([alert(name2, job="a", fingerprint="n1", status="resolved")])
    assert hooks.alertmanager(body).json()["started"] == 0
    assert hooks.alertmanager(body).json()["duplicates"] == 1  # a resolution is acted on once too
    with http(hooks.url, admin_token) as client:
        events = client.get("/api/v1/audit", params={"action": "alert.resolved", "limit": 200}).json()
    items = events["items"] if isinstance(events, dict) else events
    assert sum(1 for e in items if e["after"] and e["after"].get("rule") == rule2) == 1


def test_notify_posts_the_runs_summary_when_it_ends(hooks, hooks_dir, engine, settings):
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rule, name = unique(), unique("A")
        webhook = f"http://127.0.0.1:{server.server_port}/hook"
        write_rules(hooks_dir, rule_file(rule, name, f"    notify: {{webhook: '{webhook}', channel: '#oncall'}}\n"))
        hooks.alertmanager(payload([alert(name, job="a")]))
        [run] = runs_of(engine, rule)
        post_due(engine, settings)
        assert received == []  # not finished yet
        with session_scope(engine) as session:
            runs.cancel(session, run_id=run.id, actor=OPERATOR, reason="test", settings=settings, client=None)
        post_due(engine, settings)
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1 and f"#{run.id}" in received[0]["text"] and "cancelled" in received[0]["text"]
    with session_scope(engine) as session:
        assert session.exec(select(Run.status).where(Run.id == run.id)).one() == "cancelled"
