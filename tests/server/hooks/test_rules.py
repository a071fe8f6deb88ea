"""Trigger rules are validated like runbooks, every mistake with file:line:column; matching uses RE2."""

from __future__ import annotations

from server.hooks import rules as rules_mod
from server.hooks.payloads import Alert
from server.runbooks.store import load_directory
from server.runbooks.validation import check_text
from tests.server.hooks.conftest import PROBE

RUNBOOKS = {"probe": check_text(PROBE, "probe.yaml")}


def problems(text: str) -> list[str]:
    return [str(p) for p in rules_mod.check_rules(text, "t.triggers.yaml", runbooks=RUNBOOKS).problems]


def test_a_valid_file_loads_its_rules():
    ruleset = rules_mod.check_rules("""triggers:
  - id: high-errors
    runbook: probe
    match:
      labels: {alertname: HighErrorRate, severity: {in: [page, critical]}, env: {not: staging},
               instance: {regex: "10\\\\.0\\\\..*"}}
    params: {service: "{{ alert.labels.job }}"}
    cooldown: 10m
    max_concurrent: 2
    max_runs_per_minute: 5
    open_incident: {severity: sev2, title: "{{ alert.labels.alertname }} on {{ alert.labels.job }}"}
    on_resolved: resolve_incident
  - id: nightly
    runbook: probe
    schedule: {cron: "*/15 * * * *", timezone: Europe/Berlin}
    params: {service: nightly}
""", "t.triggers.yaml", runbooks=RUNBOOKS)
    assert ruleset.problems == []
    high, nightly = ruleset.rules
    assert nightly.spec.source == "schedule" and ruleset.schedules() == [nightly]
    labels = {"alertname": "HighErrorRate", "severity": "page", "env": "prod", "instance": "10.0.0.1:80"}
    assert high.matches(labels, {})
    assert not high.matches({**labels, "severity": "info"}, {})
    assert not high.matches({**labels, "env": "staging"}, {})
    assert not high.matches({**labels, "instance": "192.168.0.1"}, {})
    assert ruleset.candidates("alertmanager", labels) == [high]
    assert ruleset.candidates("alertmanager", {**labels, "alertname": "Other"}) == []
    assert ruleset.candidates("generic:ci", labels) == []


def test_every_mistake_is_reported_with_its_line_and_column():
    text = """triggers:
  - id: a
    runbook: probe
    match:
      labels:
        job: {regex: "(a)\\\\1"}
        env: {not: x, in: [y]}
    params: {service: x, colour: red}
    cooldwn: 5m
  - id: b
    runbook: no-such-runbook
  - id: c
    runbook: probe
    params: {service: "{% for i in range(10) %}x{% endfor %}", count: many}
  - id: d
    runbook: probe
    params: {service: "{{ secrets.token }}", instance: "{{ alert.labels.x | replace('a', 'b') }}"}
  - id: e
    runbook: probe
    params: {service: x}
    schedule: {cron: "61 * * * *", timezone: Mars/Olympus}
  - id: f
    runbook: probe
"""
    found = problems(text)
    expected = [
        "t.triggers.yaml:6:22: error: regex '(a)\\\\1' is not valid RE2 syntax",
        "t.triggers.yaml:7:14: error: match.labels.env: give exactly one of equals, not, regex, in",
        "t.triggers.yaml:8:26: error: runbook 'probe' has no param 'colour'",
        "t.triggers.yaml:9:5: error: unknown key 'cooldwn'",
        "t.triggers.yaml:11:14: error: no runbook 'no-such-runbook'",
        "t.triggers.yaml:14:23: error: template '{% for i in range(10) %}x{% endfor %}'",
        "t.triggers.yaml:14:71: error: param count: expected an integer",
        "t.triggers.yaml:17:23: error: template '{{ secrets.token }}': unknown name 'secrets'",
        "t.triggers.yaml:17:56: error: template \"{{ alert.labels.x | replace('a', 'b') }}\" does not parse",
        "t.triggers.yaml:21:22: error: schedule.cron",
        "t.triggers.yaml:21:46: error: schedule.timezone: Value error, unknown time zone",
        "t.triggers.yaml:22:5: error: runbook 'probe' needs param 'service'",
    ]
    text_found = "\n".join(found)
    for line in expected:
        head = line.replace("Value error, ", "")
        assert any(f.startswith(head) for f in found), f"missing {line!r} in:\n{text_found}"
    assert len(found) == len(expected), text_found


def test_a_file_with_an_error_contributes_no_rule_and_ids_are_unique(tmp_path):
    (tmp_path / "probe.yaml").write_text(PROBE + """triggers:
  - id: from-runbook
    match: {labels: {alertname: A}}
    params: {service: "{{ alert.labels.job }}"}
""")
    (tmp_path / "good.triggers.yaml").write_text("triggers:\n  - {id: good, runbook: probe, params: {service: x}}\n"
                                                 "  - {id: from-runbook, runbook: probe, params: {service: y}}\n")
    (tmp_path / "bad.triggers.yaml").write_text("triggers:\n  - {id: fine, runbook: probe, params: {service: x}}\n"
                                                "  - {id: broken, runbook: probe}\n")
    snapshot = load_directory(tmp_path)
    assert list(snapshot.runbooks) == ["probe"] and snapshot.problems == []  # trigger files are not runbooks
    loaded = rules_mod.load(tmp_path, snapshot)
    assert [r.id for r in loaded.rules] == ["from-runbook", "good"]
    assert loaded.rules[0].spec.runbook == "probe"  # a runbook's own triggers start it
    messages = [str(p) for p in loaded.problems]
    assert any("bad.triggers.yaml:3:5" in m and "needs param 'service'" in m for m in messages), messages
    assert any("good.triggers.yaml:3" in m and "already used" in m for m in messages), messages


def test_regexes_run_in_linear_time_on_hostile_labels():
    ruleset = rules_mod.check_rules("""triggers:
  - id: redos
    runbook: probe
    match: {labels: {path: {regex: "(a+)+$"}}}
    params: {service: x}
""", "t.triggers.yaml", runbooks=RUNBOOKS)
    [rule] = ruleset.rules
    # With backtracking engines this label takes longer than the test's timeout; RE2 answers at once.
    assert not rule.matches({"path": "a" * 50_000 + "!"}, {})
    assert rule.matches({"path": "a" * 50_000}, {})


def test_templates_that_compute_huge_values_are_refused_when_rendered():
    ruleset = rules_mod.check_rules("""triggers:
  - id: huge
    runbook: probe
    params:
      service: "{{ 'x' * 1000000000 }}"
      instance: "{{ alert.labels.job * 100000 }}"
      count: "{{ 9 ** 9 ** 9 }}"
""", "t.triggers.yaml", runbooks=RUNBOOKS)
    [rule] = ruleset.rules
    alert = Alert("firing", {"job": "abcdefgh"}, {}, "fp", "t")
    context = {"alert": alert.context(), "payload": {}, "delivery": {}}
    # the sandbox's bounds (server.runbooks.expressions) stop the first and last; the 16 KiB cap on a rendered
    # trigger param stops the second, which stays under the sandbox's million-item bound
    for name, needle in [("service", "would make a value of 1,000,000,000 items"),
                         ("instance", "longer than 16384 characters"), ("count", "too large")]:
        single = rules_mod.Rule(rule.spec.model_copy(update={"params": {name: rule.spec.params[name]}}),
                                rule.file, rule.line, [], [])
        try:
            rules_mod.render_params(single, context)
        except Exception as exc:
            assert needle in str(exc) and f"param {name}" in str(exc), exc
        else:
            raise AssertionError(f"{name} rendered")
