"""The console calls the REST API's route functions as Python functions (one code path for every change).
It passes their arguments by position, so it pins here the signatures it relies on: a change to one of
them fails this test, naming the function, instead of passing an argument into the wrong parameter."""

from __future__ import annotations

import inspect

import pytest

from server.audit import routes as audit
from server.auth import routes as tokens
from server.flags import routes as flags
from server.hooks import routes as hooks
from server.incidents import routes as incidents
from server.loglevels import routes as loglevels
from server.runbooks import routes as runbooks
from server.runs import routes as runs

USED = {
    audit.list_audit_events: ["session", "_actor", "actor", "action", "target_type", "target_id", "incident_id",
                              "since", "until", "cursor", "limit"],
    tokens.list_tokens: ["session", "_actor", "include_revoked"],
    tokens.revoke_token: ["ref", "request", "settings", "client", "session", "actor"],
    tokens.create_token: ["body", "session", "actor"],
    flags.update_flag: ["key", "body", "request", "response", "session", "actor", "if_match"],
    flags.get_flag: ["key", "response", "session", "_actor", "include_deleted"],
    flags.list_versions: ["key", "session", "_actor"],
    flags.rollback_flag: ["key", "body", "request", "response", "session", "actor", "if_match"],
    flags.delete_flag: ["key", "request", "response", "session", "actor", "reason", "incident_id", "if_match"],
    loglevels.create_override: ["body", "request", "settings", "session", "actor"],
    loglevels.end_override: ["override_id", "request", "session", "actor", "reason"],
    incidents.list_incidents: ["session", "_actor", "status", "limit"],
    incidents.open_incident: ["body", "session", "actor"],
    incidents.get_incident: ["ref", "session", "_actor"],
    incidents.incident_timeline: ["ref", "session", "_actor"],
    incidents.rollback_incident: ["ref", "body", "settings", "client", "session", "actor"],
    incidents.update_incident: ["ref", "body", "session", "actor"],
    runbooks.list_runbooks: ["request", "session", "_actor"],
    runbooks.get_runbook: ["runbook_id", "request", "session", "_actor"],
    runs.list_runs: ["session", "_actor", "runbook", "status", "actor", "incident_id", "since", "until", "cursor",
                     "limit"],
    runs.get_run: ["run_id", "request", "session", "_actor"],
    runs.run_events: ["run_id", "request", "settings", "session", "_actor", "last_event_id", "after"],
    runs.download_artifact: ["run_id", "name", "request", "session", "_actor"],
    runs.rerun: ["run_id", "request", "settings", "session", "actor", "body"],
    runs.create_run: ["body", "request", "session", "actor", "idempotency_key"],
    hooks.list_deliveries: ["session", "_actor", "source", "cursor", "limit"],
    hooks.get_delivery: ["delivery_id", "session", "_actor"],
    hooks.list_triggers: ["request", "_actor"],
}


@pytest.mark.parametrize("function", list(USED), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_route_functions_the_console_calls_keep_their_signature(function):
    assert list(inspect.signature(function).parameters) == USED[function], (
        f"{function.__module__}.{function.__name__} changed its parameters: update its call in server/ui/")
