"""The chat grammar: every command parses to what it says, every mistake names itself and the usage."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.chat import grammar as g


@pytest.mark.parametrize(("text", "expected"), [
    ("run checkout-latency service=checkout threshold_ms=300",
     g.RunCommand("checkout-latency", {"service": "checkout", "threshold_ms": "300"})),
    ('run smoke note="two words" incident=INC-4', g.RunCommand("smoke", {"note": "two words"}, "INC-4")),
    ("status 42", g.RunRef("status", 42)),
    ("cancel 7", g.RunRef("cancel", 7)),
    ("approve 7 kill-new-pricing", g.ApprovalCommand(7, "kill-new-pricing", True)),
    ("reject 7 kill-new-pricing too risky now", g.ApprovalCommand(7, "kill-new-pricing", False, "too risky now")),
    ("runbooks", g.ListRunbooks()),
    ("flags checkout.", g.ListFlags("checkout.")),
    ("flags", g.ListFlags()),
    ("flag new-pricing off for 30m pricing bug", g.FlagCommand("new-pricing", False, timedelta(minutes=30),
                                                                "pricing bug")),
    ("flag new-pricing ON incident=INC-2", g.FlagCommand("new-pricing", True, None, None, "INC-2")),
    ("rollback flag new-pricing", g.RollbackFlag("new-pricing")),
    ("rollback flag new-pricing to 3 bad deploy", g.RollbackFlag("new-pricing", 3, "bad deploy")),
    ("loglevel checkout app.db debug for 15m slow queries",
     g.LogLevelCommand("checkout", "app.db", "DEBUG", timedelta(minutes=15), "slow queries")),
    ('incident open "Checkout is slow" sev2', g.IncidentOpen("Checkout is slow", "sev2")),
    ("incident INC-3", g.IncidentShow("INC-3")),
    ("incident resolve INC-3", g.IncidentResolve("INC-3")),
    ("help", g.Help()),
    ("", g.Help()),
])
def test_parses(text, expected):
    assert g.parse(text) == expected


@pytest.mark.parametrize(("text", "problem", "usage"), [
    ("launch rockets", "unknown command 'launch'", ""),
    ("run", "name the runbook", g.USAGE["run"]),
    ("run smoke threshold", "'threshold' is not key=value", g.USAGE["run"]),
    ("status abc", "'abc' is not a run id", g.USAGE["status"]),
    ("approve 7", "give the run id and the step id", g.USAGE["approve"]),
    ("flag new-pricing maybe", "give the flag key and on or off", g.USAGE["flag"]),
    ("flag new-pricing off for soon", "invalid duration 'soon'", g.USAGE["flag"]),
    ("rollback run 4", "only flags can be rolled back", g.USAGE["rollback"]),
    ("loglevel checkout app.db LOUD for 15m", "unknown level 'LOUD'", g.USAGE["loglevel"]),
    ("loglevel checkout app.db DEBUG", "give service, logger, level and `for`", g.USAGE["loglevel"]),
    ('incident open "t" sev9', "severity sev1..sev4", g.USAGE["incident"]),
    ('run smoke note="unclosed', "check the quotes", ""),
])
def test_mistakes_name_the_problem_and_the_usage(text, problem, usage):
    with pytest.raises(g.UsageError) as caught:
        g.parse(text)
    assert problem in caught.value.problem
    assert caught.value.usage == usage


def test_help_lists_every_command_with_the_configured_word():
    text = g.help_text("ops")
    assert text.count("`/ops ") == len(g.USAGE)
