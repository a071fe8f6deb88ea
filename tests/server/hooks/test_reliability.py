"""Alert storms and failures: 1,000 alerts against 200 rules with the guards applied, nothing half-written when
a delivery fails midway, and runs committed as queued while Redis is down, sent by the relay later."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import func, select

from server.app import create_app
from server.db import session_scope
from server.hooks.models import HookDelivery, TriggerFiring
from server.incidents.models import Incident
from server.runs import sweeps
from server.runs.models import Run
from tests.server.hooks.conftest import Hooks, alert, payload, unique, write_rules
from tests.server.hooks.test_receivers import runs_of
from tests.support import free_port_url, http, serve, wait_run


def storm_rules(prefix: str, count: int = 200) -> str:
    out = ["triggers:"]
    for i in range(count):
        out += [f"  - id: {prefix}-{i}", "    runbook: probe",
                f"    match: {{labels: {{alertname: {prefix}A{i % 190}, severity: {{in: [page, critical]}}}}}}"
                if i < 190 else f"    match: {{labels: {{team: {{regex: '{prefix}-t{i}.*'}}}}}}",
                '    params: {service: "{{ alert.labels.job }}"}', "    max_runs_per_minute: 2",
                "    open_incident: {title: 'storm {{ alert.labels.alertname }}'}"]
    return "\n".join(out) + "\n"


def test_a_thousand_alerts_against_two_hundred_rules(hooks, hooks_dir, engine):
    prefix = unique("s")
    write_rules(hooks_dir, storm_rules(prefix))
    alerts = [alert(f"{prefix}A{i % 190}", job=f"job-{i}", severity="page" if i % 10 else "info",
                    team=f"{prefix}-t{190 + i % 10}x") for i in range(1000)]
    response = hooks.alertmanager(payload(alerts))
    assert response.status_code == 200, response.text
    body = response.json()
    # 190 alertname rules see 5 or 6 alerts each, but severity info (every alert of 19 alertnames) matches none;
    # 10 team rules see 100 alerts each. Two runs start per rule; max_runs_per_minute suppresses the rest.
    assert body["started"] == 171 * 2 + 10 * 2
    assert body["started"] + body["suppressed"] == 900 + 1000
    assert body["ignored"] == 0
    with session_scope(engine) as session:
        started = session.exec(select(func.count()).select_from(TriggerFiring)
                               .where(TriggerFiring.rule_id.like(f"{prefix}-%"))).one()
        incidents = session.exec(select(func.count()).select_from(Incident)
                                 .where(Incident.title.like(f"storm {prefix}%"))).one()
    assert started == 362 and incidents == 181  # one per rule that started runs, for this one alert group
    again = hooks.alertmanager(payload(alerts, group_key="other")).json()
    assert again["started"] == 0  # every rule has had its 2 runs this minute


def _plant_failure(engine, marker: str) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"CREATE TRIGGER boom_{marker} BEFORE INSERT ON runs WHEN NEW.params LIKE '%{marker}%' "
                              "BEGIN SELECT RAISE(ABORT, 'planted failure'); END"))
        else:
            conn.execute(text(f"CREATE FUNCTION boom_{marker}() RETURNS trigger AS $$ BEGIN "
                              f"IF NEW.params::text LIKE '%{marker}%' THEN RAISE EXCEPTION 'planted failure'; END IF; "
                              "RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(text(f"CREATE TRIGGER boom_{marker} BEFORE INSERT ON runs FOR EACH ROW "
                              f"EXECUTE FUNCTION boom_{marker}()"))


def _remove_failure(engine, marker: str) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"DROP TRIGGER boom_{marker}"))
        else:
            conn.execute(text(f"DROP TRIGGER boom_{marker} ON runs"))
            conn.execute(text(f"DROP FUNCTION boom_{marker}()"))


def test_a_delivery_that_fails_midway_leaves_nothing_behind(hooks, hooks_dir, engine):
    rule, name = unique(), unique("A")
    marker = unique("explode").replace("-", "")
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    match: {{labels: {{alertname: {name}}}}}
    params: {{service: "{{{{ alert.labels.job }}}}"}}
    open_incident: {{title: "fail {name}"}}
""")
    alerts = [alert(name, job=f"svc-{i}") for i in range(100)] + [alert(name, job=marker)]
    alerts += [alert(name, job=f"late-{i}") for i in range(10)]

    def counted():
        with session_scope(engine) as session:
            return (session.exec(select(func.count()).select_from(HookDelivery)).one(),
                    session.exec(select(func.count()).select_from(Run)).one(),
                    session.exec(select(func.count()).select_from(Incident)
                                 .where(Incident.title == f"fail {name}")).one())

    before = counted()
    _plant_failure(engine, marker)
    try:
        failed = hooks.alertmanager(payload(alerts))
    finally:
        _remove_failure(engine, marker)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert counted() == before and runs_of(engine, rule) == []
    # Alertmanager re-sends it; now it goes through, whole.
    retried = hooks.alertmanager(failed.request.content)
    assert retried.status_code == 200 and retried.json()["started"] == 111


def test_with_redis_down_runs_are_committed_queued_and_relayed_later(hook_settings, hooks_dir, hook_token, engine,
                                                                   hooks_worker, admin_token):
    rule, name = unique(), unique("A")
    write_rules(hooks_dir, f"""triggers:
  - id: {rule}
    runbook: probe
    match: {{labels: {{alertname: {name}}}}}
    params: {{service: "{{{{ alert.labels.job }}}}"}}
""")
    offline = hook_settings.model_copy(update={"redis_url": free_port_url("redis")})
    with serve(create_app(offline)) as url:
        response = Hooks(url, hook_token).alertmanager(payload([alert(name, job=f"j{i}") for i in range(3)]))
    assert response.status_code == 200, response.text
    assert response.json()["started"] == 3
    queued = runs_of(engine, rule)
    assert [(r.status, r.dispatched_at) for r in queued] == [("queued", None)] * 3
    assert sweeps.relay(engine, hook_settings, min_age_s=0) >= 3
    with serve(create_app(hook_settings)) as url, http(url, admin_token) as client:
        done = [wait_run(client, r.id, timeout=60) for r in queued]
    assert [d["status"] for d in done] == ["succeeded"] * 3
