"""Compatibility: the real OpenFeature Python SDK with its OFREP provider against a live runbookd."""

from __future__ import annotations

import uuid

import pytest
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from server.auth.models import Role


@pytest.fixture
def of_client(base_url, make_token):
    token = make_token(Role.client)
    domain = f"runbookd-{uuid.uuid4().hex[:8]}"
    provider = OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {token}"}, timeout=5)
    openfeature.set_provider_and_wait(provider, domain=domain)
    yield openfeature.get_client(domain)
    provider.session.close()


def test_typed_flags(make_flag, of_client):
    on = dict(enabled=True, default_variant="b", off_variant="a")
    boolean = make_flag(type="boolean", variants={"a": False, "b": True}, **on)["key"]
    string = make_flag(type="string", variants={"a": "x", "b": "checkout-v2"}, **on)["key"]
    integer = make_flag(type="number", variants={"a": 1, "b": 42}, **on)["key"]
    floating = make_flag(type="number", variants={"a": 1.5, "b": 0.25}, **on)["key"]
    obj = make_flag(type="object", variants={"a": {}, "b": {"limit": 10, "regions": ["eu"]}}, **on)["key"]
    ctx = EvaluationContext(targeting_key="user-1")

    details = of_client.get_boolean_details(boolean, False, ctx)
    assert (details.value, details.variant, details.reason, details.error_code) == (True, "b", Reason.STATIC, None)
    assert details.flag_metadata["version"] == 1
    assert of_client.get_string_value(string, "fallback", ctx) == "checkout-v2"
    assert of_client.get_integer_value(integer, 0, ctx) == 42
    assert of_client.get_float_value(floating, 0.0, ctx) == 0.25
    assert of_client.get_object_value(obj, {}, ctx) == {"limit": 10, "regions": ["eu"]}


def test_targeting_split_disabled_and_missing(make_flag, of_client):
    rules = [{"conditions": [{"attribute": "plan", "operator": "in", "value": ["pro", "team"]},
                             {"attribute": "app_version", "operator": "semver_gte", "value": "2.0.0"}],
              "variant": "new"},
             {"conditions": [], "split": [{"variant": "new", "weight": 50}, {"variant": "old", "weight": 50}]}]
    key = make_flag(type="string", variants={"new": "v2", "old": "v1"}, default_variant="old", off_variant="old",
                    environments={"production": {"enabled": True, "rules": rules}})["key"]

    targeted = of_client.get_string_details(key, "none", EvaluationContext(
        targeting_key="u-1", attributes={"plan": "pro", "app_version": "2.3.1"}))
    assert (targeted.value, targeted.reason, targeted.variant) == ("v2", Reason.TARGETING_MATCH, "new")

    seen = {}
    for i in range(200):
        details = of_client.get_string_details(key, "none", EvaluationContext(targeting_key=f"user-{i}",
                                                                             attributes={"plan": "free"}))
        assert details.reason == Reason.SPLIT
        seen[f"user-{i}"] = details.value
    assert set(seen.values()) == {"v1", "v2"}
    assert 60 < sum(v == "v2" for v in seen.values()) < 140
    repeat = of_client.get_string_value(key, "none", EvaluationContext(targeting_key="user-7",
                                                                       attributes={"plan": "free"}))
    assert repeat == seen["user-7"]

    no_key = of_client.get_string_details(key, "none", EvaluationContext(attributes={"plan": "free"}))
    assert (no_key.value, no_key.error_code) == ("none", ErrorCode.TARGETING_KEY_MISSING)

    off = make_flag(type="string", variants={"new": "v2", "old": "v1"}, default_variant="new", off_variant="old",
                    enabled=False)["key"]
    disabled = of_client.get_string_details(off, "none", EvaluationContext(targeting_key="u"))
    assert (disabled.value, disabled.reason) == ("v1", Reason.DISABLED)

    missing = of_client.get_boolean_details("flag-that-does-not-exist", True, EvaluationContext(targeting_key="u"))
    assert (missing.value, missing.error_code, missing.reason) == (True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)


def test_type_mismatch_falls_back_to_the_default(make_flag, of_client):
    key = make_flag(type="string", variants={"a": "text"}, default_variant="a", off_variant="a", enabled=True)["key"]
    details = of_client.get_boolean_details(key, False, EvaluationContext(targeting_key="u"))
    assert (details.value, details.error_code) == (False, ErrorCode.TYPE_MISMATCH)
