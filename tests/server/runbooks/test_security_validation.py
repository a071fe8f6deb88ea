"""Issue 15: validation refuses what lets a run's starter pick the program, and reads the four-eyes form."""

from __future__ import annotations

from pathlib import Path

from server.runbooks.validation import check_text
from server.settings import SHIPPED_RUNBOOKS_DIR

PROGRAM_FROM_PARAM = """
title: t
params:
  program: {%s}
steps:
  - {id: s, uses: shell, with: {argv: ["{{ params.program }}", restart, x]}}
"""


def test_a_param_may_choose_the_program_only_as_an_enum():
    checked = check_text(PROGRAM_FROM_PARAM % "type: string", "t.yaml")
    assert checked.runbook is None
    assert any("argv[0]" in p.message and "enum" in p.message for p in checked.errors), checked.problems
    assert check_text(PROGRAM_FROM_PARAM % "type: enum, choices: [systemctl, service]", "t.yaml").runbook is not None


def test_a_command_string_is_checked_the_same_way():
    text = 'title: t\nparams: {p: {type: string}}\nsteps: [{id: s, uses: shell, with: {command: "{{ params.p }} x"}}]\n'
    assert any("argv[0]" in p.message for p in check_text(text, "t.yaml").errors)


def test_the_shipped_smoke_check_no_longer_lets_the_starter_choose_the_program():
    text = Path(SHIPPED_RUNBOOKS_DIR / "smoke-check-with-fix.yaml").read_text()
    checked = check_text(text, "smoke-check-with-fix.yaml")
    assert checked.runbook is not None, checked.problems
    assert "restart_program" not in checked.runbook.params
    fix = next(s for s in checked.runbook.steps if s.id == "fix")
    assert fix.with_["argv"][0] == "systemctl" and fix.approvers(others_by_default=False) == "others"
    assert checked.runbook.params["service"].pattern and not __import__("re").fullmatch(
        checked.runbook.params["service"].pattern, "--help")


def test_approval_mapping_forms():
    base = "title: t\nsteps:\n  - {id: s, uses: log, with: {message: m}, approval: %s}\n"
    step = check_text(base % "{required: true, by: others}", "t.yaml").runbook.steps[0]
    assert step.approval == "required" and step.approvers(others_by_default=False) == "others"
    step = check_text(base % "{required: true}", "t.yaml").runbook.steps[0]
    assert step.approvers(others_by_default=False) == "anyone" and step.approvers(others_by_default=True) == "others"
    assert check_text(base % "{required: false}", "t.yaml").runbook.steps[0].approvers(others_by_default=True) is None
    bad = check_text(base % "{required: true, by: me}", "t.yaml")
    assert bad.runbook is None and any("anyone or others" in p.message for p in bad.errors)
