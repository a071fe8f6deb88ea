"""Issue 15, finding 2: what an expression may compute is bounded, at load time (the api) and at run time."""

from __future__ import annotations

import time

import psutil
import pytest

from server.auth.models import Role
from server.runbooks import expressions, validation
from server.runbooks.validation import check_text
from tests.support import http

BOMB = "title: t\nsteps:\n  - {id: s, uses: log, with: {message: \"{{ %s }}\"}}\n"


@pytest.mark.parametrize("expr", ["'a' * 150000000", "'a'|center(150000000)", "'%0150000000d' % 1",
                                  "'{:>150000000}'.format(1)", "'a'.ljust(150000000)"])
def test_a_viewer_cannot_make_the_api_compute_a_huge_value_through_validate(base_url, make_token, expr):
    before = psutil.Process().memory_info().rss  # the live api runs in this process
    with http(base_url, make_token(Role.viewer)) as viewer:
        started = time.monotonic()
        answer = viewer.post("/api/v1/runbooks/validate", json={"content": BOMB % expr, "filename": "t.yaml"})
        took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    grew_mb = (psutil.Process().memory_info().rss - before) / 2**20
    # Folding 'a' * 150000000 at compile time took 2.1 s and 500 MB; nothing is evaluated while validating now.
    assert took < 1.0 and grew_mb < 50, (took, grew_mb)


@pytest.mark.parametrize(("expr", "message"), [
    ("'a' * 150000000", "at most 1,000,000"),
    ("[1] * 150000000", "at most 1,000,000"),
    ("'a'|center(150000000)", "too large a width"),
    ("'ab'|replace('', 'x' * 900000)", "at most 1,000,000"),
    ("'{:>150000000}'.format(1)", "format width"),
    ("'%0150000000d' % 1", "format width"),
    ("2 ** 1000", "exponent too large"),
    (" * ".join(["(10 ** 12)"] * 120), "bits"),
    ("range(1000000)", "MAX_RANGE"),
])
def test_run_time_evaluation_refuses_huge_results(expr, message):
    with pytest.raises(expressions.ExpressionError, match=message):
        expressions.evaluate(expr, {})


def test_loops_and_concatenation_are_bounded_at_run_time():
    started = time.monotonic()
    with pytest.raises(expressions.ExpressionError, match="too much work"):
        expressions.render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {})
    with pytest.raises(expressions.ExpressionError, match="at most 1,000,000"):
        expressions.render("{% set s = 'a' * 900000 %}{{ s ~ s }}", {})
    with pytest.raises(expressions.ExpressionError, match="renders over"):
        expressions.render("{% set s = 'a' * 900000 %}{{ s }}{{ s }}", {})
    assert time.monotonic() - started < 5


def test_ordinary_expressions_still_work():
    assert expressions.evaluate("[1, 2] * 2 + [3]", {}) == [1, 2, 1, 2, 3]
    assert expressions.evaluate("'%05d' % 42", {}) == "00042"
    assert expressions.evaluate("'-'.join(['a', 'b'])", {}) == "a-b"
    assert expressions.render("{% for i in range(3) %}{{ i ~ ',' }}{% endfor %}", {}) == "0,1,2,"
    assert expressions.render("{{ params.x|upper|center(9) }}", {"params": {"x": "ok"}}) == "OK".center(9)


def test_one_validation_does_bounded_work(monkeypatch):
    monkeypatch.setattr(validation, "MAX_TEMPLATES", 50)  # the same rule as 2000, quicker to show
    many = "title: t\nsteps:\n" + "".join(f"  - {{id: s{i}, uses: log, with: {{message: \"{{{{ {i} }}}}\"}}}}\n"
                                          for i in range(60))
    errors = check_text(many, "t.yaml").errors
    assert [p.message for p in errors if "too large to validate" in p.message], errors
    assert len(errors) == 1
    deep = BOMB % ("(" * 3000 + "1" + ")" * 3000)
    assert any("nested too deeply" in p.message for p in check_text(deep, "t.yaml").errors)
