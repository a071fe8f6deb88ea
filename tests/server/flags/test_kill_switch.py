"""A kill switch always serves "off": every flag shape, killed through each way in, evaluated by the real
OpenFeature SDK (OFREP provider) against a live runbookd, with flags list and flags show agreeing."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from server.auth.models import Actor, Role, Source
from server.flags.steps import FlagSetInputs
from tests.server.chat.conftest import Slack, chat_settings, chat_url  # noqa: F401 (fixtures)
from tests.server.flags.conftest import new_key
from tests.server.flags.test_cli import runbookd
from tests.support import http, wait_for
from workers.steps.base import StepContext, load_step_kinds

# type -> (variants, the "on" variant, the off variant)
TYPES: dict[str, tuple[dict[str, Any], str, str]] = {
    "boolean": ({"enabled": True, "disabled": False}, "enabled", "disabled"),
    "string": ({"new": "checkout-v2", "old": "checkout-v1"}, "new", "old"),
    "number": ({"high": 250.5, "low": 100.5}, "high", "low"),
    "object": ({"full": {"limit": 10, "regions": ["eu", "us"]}, "lite": {"limit": 1}}, "full", "lite"),
}
SHAPES = list(itertools.product(TYPES, ("plain", "rules-and-split"), ("env-default-on", "env-default-off")))
# A context every rule matches: a kill must win over targeting and splits too.
CONTEXT = EvaluationContext(targeting_key="user-42", attributes={"plan": "pro"})


def shape_body(kind: str, targeting: str, env_default: str) -> dict[str, Any]:
    variants, on, off = TYPES[kind]
    rules = []
    if targeting == "rules-and-split":
        rules = [{"conditions": [{"attribute": "plan", "operator": "equals", "value": "pro"}], "variant": on},
                 {"conditions": [], "split": [{"variant": on, "weight": 50}, {"variant": off, "weight": 50}]}]
    body: dict[str, Any] = {
        "key": new_key(f"kill-{kind}"), "type": kind, "variants": variants, "default_variant": on,
        "reason": "test", "environments": {"production": {
            "enabled": True, "default_variant": on if env_default == "env-default-on" else off, "rules": rules}}}
    if kind != "boolean":  # a boolean flag's off variant defaults to its false one
        body["off_variant"] = off
    return body


@pytest.fixture
def of_client(base_url, make_token):
    token = make_token(Role.client)
    domain = f"kill-{uuid.uuid4().hex[:8]}"
    provider = OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {token}"}, timeout=5)
    openfeature.set_provider_and_wait(provider, domain=domain)
    yield openfeature.get_client(domain)
    provider.session.close()


def sdk_details(client, kind: str, key: str):
    return {"boolean": lambda: client.get_boolean_details(key, True, CONTEXT),
            "string": lambda: client.get_string_details(key, "fallback", CONTEXT),
            "number": lambda: client.get_float_details(key, -1.0, CONTEXT),
            "object": lambda: client.get_object_details(key, {"fallback": True}, CONTEXT)}[kind]()


@pytest.fixture
def flags(base_url, operator_token, of_client):
    """One live flag per shape, serving its on value to CONTEXT before the kill."""
    made = []
    with http(base_url, operator_token) as api:
        for kind, targeting, env_default in SHAPES:
            body = shape_body(kind, targeting, env_default)
            response = api.post("/api/v1/flags", json=body)
            assert response.status_code == 201, response.text
            made.append((kind, body["key"]))
            before = sdk_details(of_client, kind, body["key"])
            if targeting == "plain" and env_default == "env-default-off":
                assert before.reason == Reason.STATIC
            else:
                assert before.value == TYPES[kind][0][TYPES[kind][1]], before
    return made


def assert_killed(base_url, operator_token, of_client, made) -> None:
    with http(base_url, operator_token) as api:
        for kind, key in made:
            variants, _on, off = TYPES[kind]
            wait_for(lambda k=key, t=kind: sdk_details(of_client, t, k).reason == Reason.DISABLED, 10,
                     f"{key} to read as disabled")
            details = sdk_details(of_client, kind, key)
            assert (details.value, details.variant, details.reason, details.error_code) == \
                (variants[off], off, Reason.DISABLED, None), key
            shown = api.get(f"/api/v1/flags/{key}").json()
            assert shown["spec"]["off_variant"] == off
            assert shown["serving"]["production"] == {"enabled": False, "variant": off, "value": variants[off],
                                                      "reason": "DISABLED", "rules": len(shown["spec"][
                                                          "environments"]["production"]["rules"])}
        listed = {f["key"]: f for f in api.get("/api/v1/flags").json()}
        for kind, key in made:
            assert listed[key]["serving"]["production"]["variant"] == TYPES[kind][2]


def test_killed_through_the_api(base_url, operator_token, of_client, flags):
    with http(base_url, operator_token) as api:
        for _kind, key in flags:
            response = api.patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}},
                                                                "for": "30m", "reason": "kill"})
            assert response.status_code == 200, response.text
    assert_killed(base_url, operator_token, of_client, flags)


def test_killed_through_the_cli(base_url, operator_token, of_client, flags):
    for kind, key in flags:
        done = runbookd(base_url, operator_token, "flag", "kill", key, "--for", "30m", "--reason", "errors")
        assert done.returncode == 0, done.stderr
        off = TYPES[kind][2]
        assert f"production serves {off} = {json.dumps(TYPES[kind][0][off])} (off variant)" in done.stderr
    assert_killed(base_url, operator_token, of_client, flags)
    listed = runbookd(base_url, operator_token, "flags", "list")
    for kind, key in flags:
        row = next(line for line in listed.stdout.splitlines() if key in line)
        assert f"production:off→{TYPES[kind][2]}" in row, row
        shown = json.loads(runbookd(base_url, operator_token, "flags", "show", key).stdout)
        assert shown["serving"]["production"]["variant"] == TYPES[kind][2]


def test_killed_through_chat(base_url, chat_url, operator_token, of_client, flags):  # noqa: F811
    slack = Slack(chat_url)
    for kind, key in flags:
        reply = slack.command(f"flag {key} off for 30m errors").json()
        off = TYPES[kind][2]
        assert f"Flag `{key}` turned off in production" in reply["text"], reply
        assert f"serves its off variant {off!r}" in reply["text"], reply
    assert_killed(base_url, operator_token, of_client, flags)


def test_killed_through_the_flag_set_step(base_url, settings, engine, operator_token, of_client, flags):
    step = load_step_kinds()["flag.set"]()
    ctx = StepContext(run_id=1, step_id="kill", attempt=1, actor=Actor(name="alice", role=Role.operator,
                                                                         source=Source.api),
                      incident_id=None, settings=settings, engine=engine)
    for kind, key in flags:
        outputs = step.run(FlagSetInputs.model_validate({"flag": key, "enabled": False, "for": "30m"}), ctx)
        variants, _on, off = TYPES[kind]
        assert outputs["serving"] == {"variant": off, "value": variants[off], "reason": "DISABLED"}
    assert_killed(base_url, operator_token, of_client, flags)


def test_other_types_must_name_their_off_variant(base_url, operator_token):
    with http(base_url, operator_token) as api:
        for kind in ("string", "number", "object"):
            body = shape_body(kind, "plain", "env-default-on")
            del body["off_variant"]
            response = api.post("/api/v1/flags", json=body)
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert f"a {kind} flag must name its off_variant" in error["message"]
        no_false = {**shape_body("boolean", "plain", "env-default-on"), "variants": {"enabled": True}}
        response = api.post("/api/v1/flags", json=no_false)
        assert response.status_code == 422 and "variant whose value is false" in response.text
        ghost = {**shape_body("string", "plain", "env-default-on"), "off_variant": "ghost"}
        response = api.post("/api/v1/flags", json=ghost)
        assert response.status_code == 422 and "off_variant: 'ghost'" in response.text
        # Changing the off variant is a versioned change like any other, and takes effect at once.
        body = shape_body("string", "plain", "env-default-on")
        api.post("/api/v1/flags", json={**body, "environments": {"production": {"enabled": False}}})
        changed = api.patch(f"/api/v1/flags/{body['key']}", json={"off_variant": "new", "reason": "swap"})
        assert changed.status_code == 200 and changed.json()["serving"]["production"]["variant"] == "new"
        removed = api.patch(f"/api/v1/flags/{body['key']}", json={"variants": {"old": "checkout-v1"}})
        assert removed.status_code == 422 and "off_variant: 'new'" in removed.text
