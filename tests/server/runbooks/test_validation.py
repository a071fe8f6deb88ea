"""Load-time validation: every broken file gives a clear, positioned error and nothing crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.runbooks import expressions
from server.runbooks.params import coerce
from server.runbooks.store import load_directory
from server.runbooks.validation import check_text
from server.settings import SHIPPED_RUNBOOKS_DIR
from tests.support import REPO

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.yaml"))
SHIPPED = sorted(SHIPPED_RUNBOOKS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_each_broken_runbook_gets_its_positioned_error(path):
    text = path.read_text()
    expected = text.splitlines()[0].removeprefix("# expect: ") if text.strip() else "the file is empty"
    checked = check_text(text, str(path))
    assert checked.runbook is None
    assert any(expected in str(problem) for problem in checked.errors), [str(p) for p in checked.errors]
    assert all(str(path) in str(problem) for problem in checked.problems)


def test_the_corpus_covers_what_the_issue_lists():
    names = {p.stem for p in CORPUS}
    assert {"bad-yaml", "billion-laughs", "wrong-types", "unknown-kind", "template-injection"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_runbook_is_valid_and_clean(path):
    checked = check_text(path.read_text(), str(path))
    assert not checked.problems, [str(p) for p in checked.problems]
    assert checked.runbook is not None and checked.runbook.id == path.stem


def test_at_least_three_runbooks_ship():
    assert len(SHIPPED) >= 3


def test_all_errors_are_reported_at_once():
    checked = check_text((Path(__file__).parent.parent / "runs/runbooks/trio.yaml").read_text().replace(
        "uses: log, with: {message: \"hello", "uses: lg, with: {mesage: \"hello").replace(
        "params.n + 1", "params.m + 1"), "trio.yaml")
    messages = [p.message for p in checked.errors]
    assert len(messages) == 2 and "unknown step kind 'lg'" in messages[0] and "'m' is not declared" in messages[1]


def test_a_malformed_part_does_not_hide_the_other_parts_errors():
    text = """\
title: Broken in several places
params:
  host: {type: strin}
  port: {type: integer, default: 80}
steps:
  - {id: a, uses: shel, with: {argv: [echo, "{{ params.nope }}"]}}
  - {id: a, uses: log, retry: {attempts: 0}, with: {message: "{{ params.host }}"}}
  - {id: c, uses: log, with: {message: "{{ steps.b.outputs }} {{ params.host }}:{{ params.port }}"}}
"""
    checked = check_text(text, "broken.yaml")
    found = [(p.line, p.message) for p in checked.errors]
    assert [line for line, _m in found] == [3, 7, 6, 6, 7, 8], found
    assert "params.host.type" in found[0][1] and "steps.1.retry.attempts" in found[1][1]
    assert "unknown step kind 'shel'" in found[2][1] and "param 'nope' is not declared" in found[3][1]
    # step 2 is malformed, yet its duplicate id is checked too; params.host is declared, if broken
    assert "duplicate step id 'a'" in found[4][1]
    assert "there is no step 'b'" in found[5][1]


def test_an_invalid_phase_does_not_hide_the_steps_other_errors():
    text = """\
title: Hidden errors
steps:
  - id: probe
    phase: obsreve
    uses: log
    with: {mesage: "{{ steps.later.outputs.x }}"}
  - {id: later, uses: log, with: {message: hi}}
"""
    found = [(p.line, p.message) for p in check_text(text, "hidden.yaml").errors]
    assert found[0][0] == 4 and "steps.0.phase" in found[0][1]
    assert any(line == 6 and "unknown key 'mesage'" in m for line, m in found), found
    assert any(line == 6 and "step 'later' has not run yet" in m for line, m in found), found


def test_param_interpolated_into_sh_c_is_a_warning_that_says_how_to_fix_it():
    text = """
title: Risky
params: {host: {type: string}}
steps:
  - id: ping
    uses: shell
    with: {argv: [sh, -c, "ping -c1 {{ params.host }}"]}
  - id: safe
    uses: shell
    with: {argv: [sh, -c, 'ping -c1 "$1"', sh, "{{ params.host }}"]}
"""
    checked = check_text(text, "risky.yaml")
    assert checked.runbook is not None, "a warning must not fail validation"
    assert len(checked.warnings) == 1
    warning = str(checked.warnings[0])
    assert warning.startswith("risky.yaml:7:27: warning:") and "env" in warning and "argument" in warning


def test_command_is_split_before_rendering_so_a_param_stays_one_argument():
    text = ('title: t\nparams: {p: {type: string}}\n'
            'steps:\n  - {id: a, uses: shell, with: {command: "echo {{ params.p }} x"}}\n')
    checked = check_text(text, "t.yaml")
    assert checked.runbook is not None
    argv = checked.runbook.steps[0].with_["argv"]
    assert argv == ["echo", "{{ params.p }}", "x"]
    assert expressions.render(argv, {"params": {"p": "a; rm -rf ~"}}) == ["echo", "a; rm -rf ~", "x"]


def test_expressions_keep_native_types_and_refuse_undefined_and_unsafe():
    context = {"params": {"n": 3, "items": [1, 2]}, "steps": {}, "run": {"id": 1}}
    assert expressions.render("{{ params.n }}", context) == 3
    assert expressions.render("{{ params.items }}", context) == [1, 2]
    assert expressions.render("n={{ params.n }}", context) == "n=3"
    assert expressions.render({"a": ["{{ params.n * 2 }}"]}, context) == {"a": [6]}
    for bad in ("params.missing", "''.__class__", "2 ** 1000", "params.n.__class__.__mro__"):
        with pytest.raises(expressions.ExpressionError):
            expressions.evaluate(bad, context)


def test_a_power_bomb_validates_and_is_stopped_by_the_power_guard():
    """`9 ** 9 ** 9` is a valid expression, so validation passes it (quickly: the sandbox never folds a power at
    compile time); evaluating it reaches the guard, which names the limit it hit."""
    text = """
title: Power bomb
params:
  n: {type: integer, default: 9}
steps:
  - id: a
    uses: assert
    with: {that: "params.n ** 9 ** 9 > 1"}
  - id: b
    uses: assert
    with: {that: "9 ** 9 ** 9 > 1"}
"""
    checked = check_text(text, "power-bomb.yaml")
    assert checked.runbook is not None and not checked.problems, [str(p) for p in checked.problems]
    context = {"params": {"n": 9}, "steps": {}, "run": {"id": 1}}
    assert expressions.evaluate("params.n ** 2", context) == 81  # ordinary powers still work
    with pytest.raises(expressions.ExpressionError, match=r"exponent too large \(over 64\)"):
        expressions.evaluate("params.n ** 65", context)
    with pytest.raises(expressions.ExpressionError, match="power result too large"):
        expressions.evaluate("params.n ** 13", context)  # 9**13 is over 10**12
    for step in checked.runbook.steps:  # the bombs themselves (Jinja's ** binds left: (9**9)**9), last
        with pytest.raises(expressions.ExpressionError, match="power result too large"):
            expressions.evaluate(step.with_["that"], context)


def test_params_are_coerced_and_each_bad_one_is_named():
    runbook = check_text("""
title: p
params:
  count: {type: integer, minimum: 1, maximum: 10}
  ratio: {type: number, default: 0.5}
  dry: {type: boolean, default: false}
  wait: {type: duration, default: 90s}
  level: {type: enum, choices: [debug, info]}
  hosts: {type: list, required: false}
  name: {type: string, pattern: "^[a-z]+$", default: abc}
steps: [{id: a, uses: log, with: {message: hi}}]
""", "p.yaml").runbook
    assert runbook is not None
    values, problems = coerce(runbook, {"count": "4", "dry": "yes", "level": "info", "hosts": "a, b"})
    assert not problems
    assert values == {"count": 4, "ratio": 0.5, "dry": True, "wait": "1m30s", "level": "info",
                      "hosts": ["a", "b"], "name": "abc"}
    _values, problems = coerce(runbook, {"count": 11, "level": "trace", "name": "ABC", "extra": 1})
    fields = {p["field"]: p["message"] for p in problems}
    assert set(fields) == {"params.count", "params.level", "params.name", "params.extra"}
    assert "maximum" in fields["params.count"] and "debug, info" in fields["params.level"]


def test_an_invalid_file_is_skipped_without_taking_down_the_others(tmp_path):
    (tmp_path / "good.yaml").write_text("title: Good\nsteps: [{id: a, uses: log, with: {message: hi}}]\n")
    (tmp_path / "bad.yaml").write_text("title: Bad\nsteps: [{id: a, uses: nope}]\n")
    snap = load_directory(tmp_path)
    assert set(snap.runbooks) == {"good"}
    assert [p.file for p in snap.problems] == [str(tmp_path / "bad.yaml")]


def test_cli_validate_works_offline_and_exits_non_zero_on_any_error(tmp_path):
    env_python = [sys.executable, "-m", "server.cli", "runbooks", "validate"]
    ok = subprocess.run([*env_python, str(SHIPPED_RUNBOOKS_DIR)], capture_output=True, text=True, cwd=REPO,
                        timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    assert f"{len(SHIPPED)} file(s): 0 error(s)" in ok.stderr
    broken = subprocess.run([*env_python, *map(str, CORPUS[:3])], capture_output=True, text=True, cwd=REPO,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert broken.returncode == 1
    assert all(str(p) in broken.stderr for p in CORPUS[:3])
