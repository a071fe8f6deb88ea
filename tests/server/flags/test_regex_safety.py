"""Issue 15, finding 5: a flag's `matches` rule runs in linear time; a pattern RE2 cannot run is refused."""

from __future__ import annotations

import time

import pytest

from server import saferegex
from server.flags.evaluation import compile_predicate
from server.flags.models import Operator
from tests.server.flags.conftest import new_key

CATASTROPHIC = "^(a+)+$"


def test_a_catastrophic_pattern_evaluates_in_linear_time(make_flag, api):
    key = new_key()
    make_flag(key, environments={"production": {"enabled": True, "rules": [
        {"conditions": [{"attribute": "name", "operator": "matches", "value": CATASTROPHIC}], "variant": "on"}]}})
    started = time.monotonic()
    # With Python's re, 23 characters took 0.41 s and each one more doubled it: 40 would take days.
    answer = api.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {"name": "a" * 40 + "!"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] is False and time.monotonic() - started < 1


def test_a_pattern_re2_cannot_run_is_refused_with_the_reason(api):
    answer = api.post("/api/v1/flags", json={
        "key": new_key(), "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off",
        "description": "d", "reason": "r", "environments": {"production": {"enabled": True, "rules": [
            {"conditions": [{"attribute": "a", "operator": "matches", "value": r"(a)\1"}], "variant": "on"}]}}})
    assert answer.status_code == 422, answer.text
    assert "RE2" in answer.text and "backreferences" in answer.text


def test_matching_text_that_is_not_valid_utf8_never_raises():
    found = compile_predicate(Operator.matches, "^x")
    assert found("x\ud800") is True and found("\ud800") is False and found(3) is False


def test_log_search_patterns_run_on_re2():
    from workers.toolkit.logsearch import Query

    query = Query(regex={"msg": CATASTROPHIC})
    started = time.monotonic()
    assert query.patterns["msg"].search("a" * 5000 + "!") is None and time.monotonic() - started < 0.5
    with pytest.raises(saferegex.InvalidPattern, match="lookaround"):
        Query(regex={"msg": "(?=a)"})
