"""The evaluation engine on its own: operators, rule order, sticky splits, reasons."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from server.flags.evaluation import EvaluationError, bucket, compile_flag, evaluate
from server.flags.models import FlagSpec


def spec(rules=None, enabled=True, **extra):
    data = {"key": "checkout.new-pricing", "type": "string", "variants": {"on": "new", "off": "old", "beta": "beta"},
            "default_variant": "off", "off_variant": "off",
            "environments": {"production": {"enabled": enabled, "rules": rules or []}}}
    data.update(extra)
    return FlagSpec.model_validate(data)


def rule(attribute, operator, value, variant="on"):
    return {"conditions": [{"attribute": attribute, "operator": operator, "value": value}], "variant": variant}


@pytest.mark.parametrize(("operator", "expected", "actual", "hit"), [
    ("equals", "eu", "eu", True), ("equals", "eu", "us", False), ("equals", 3, 3.0, True),
    ("equals", True, 1, False),
    ("not_equals", "eu", "us", True), ("not_equals", "eu", "eu", False),
    ("in", ["a", "b"], "b", True), ("in", ["a", "b"], "c", False),
    ("not_in", ["a", "b"], "c", True), ("not_in", ["a", "b"], "a", False),
    ("contains", "@corp", "x@corp.com", True), ("contains", "x", ["x", "y"], True), ("contains", "z", "abc", False),
    ("starts_with", "ab", "abc", True), ("starts_with", "b", "abc", False),
    ("ends_with", ".com", "a.com", True), ("ends_with", ".org", "a.com", False),
    ("matches", r"^user-\d+$", "user-42", True), ("matches", r"^user-\d+$", "user-x", False),
    ("gt", 10, 11, True), ("gt", 10, 10, False), ("gte", 10, 10, True), ("lt", 10, "9.5", True),
    ("lte", 10, 11, False), ("gt", 10, "not a number", False),
    ("semver_gte", "2.1.0", "2.10.0", True), ("semver_gte", "2.1.0", "2.0.9", False),
    ("semver_lt", "2.1.0", "v2.0.9", True), ("semver_eq", "1.0.0", "1.0.0", True),
    ("semver_gt", "1.0.0", "1.0.0-rc.1", False), ("semver_gt", "1.0.0", "banana", False),
    ("semver_lte", "1.0.0", "1.0.0-rc.1", True),
])
def test_operators(operator, expected, actual, hit):
    flag = compile_flag(spec([rule("attr", operator, expected)]), 1)
    variant, reason = evaluate(flag, "production", {"attr": actual})
    assert (variant, reason) == (("on", "TARGETING_MATCH") if hit else ("off", "DEFAULT"))


def test_missing_attribute_never_matches_even_negative_operators():
    flag = compile_flag(spec([rule("country", "not_equals", "fr")]), 1)
    assert evaluate(flag, "production", {}) == ("off", "DEFAULT")


def test_rules_are_evaluated_in_order_and_all_conditions_must_hold():
    both = {"conditions": [{"attribute": "plan", "operator": "equals", "value": "pro"},
                           {"attribute": "country", "operator": "in", "value": ["de", "fr"]}], "variant": "beta"}
    flag = compile_flag(spec([both, rule("plan", "equals", "pro", "on")]), 1)
    assert evaluate(flag, "production", {"plan": "pro", "country": "de"}) == ("beta", "TARGETING_MATCH")
    assert evaluate(flag, "production", {"plan": "pro", "country": "us"}) == ("on", "TARGETING_MATCH")
    assert evaluate(flag, "production", {"plan": "free"}) == ("off", "DEFAULT")


def test_disabled_static_and_unknown_environment():
    assert evaluate(compile_flag(spec(enabled=False), 1), "production", {}) == ("off", "DISABLED")
    assert evaluate(compile_flag(spec(), 1), "production", {}) == ("off", "STATIC")
    assert evaluate(compile_flag(spec(), 1), "staging", {}) == ("off", "DISABLED")


def test_split_is_sticky_and_follows_the_weights():
    split = {"conditions": [], "split": [{"variant": "on", "weight": 25}, {"variant": "off", "weight": 75}]}
    flag = compile_flag(spec([split]), 1)
    users = [f"user-{i}" for i in range(20000)]
    first = {u: evaluate(flag, "production", {"targetingKey": u}) for u in users}
    assert all(evaluate(flag, "production", {"targetingKey": u}) == first[u] for u in users[:2000])
    counts = Counter(variant for variant, _ in first.values())
    assert {reason for _, reason in first.values()} == {"SPLIT"}
    assert 0.23 < counts["on"] / len(users) < 0.27, counts
    # Another flag buckets the same users independently (the flag key is part of the hash).
    assert bucket("checkout.new-pricing", "user-1") == bucket("checkout.new-pricing", "user-1")
    same = sum(bucket("a", u) == bucket("b", u) for u in users)
    assert same < len(users) * 0.01


# Known buckets, as the README promises: SHA-256 of "<flag key>/<targeting key>", its first 8 bytes big-endian, modulo
# 1000. Written out, not computed: another hash (or another layout) moves users between variants on upgrade.
PINNED_BUCKETS = [
    ("checkout.new-pricing", "user-1", 957), ("checkout.new-pricing", "user-2", 995),
    ("checkout.new-pricing", "alice", 464), ("checkout.new-pricing", "bob", 833),
    ("checkout.new-pricing", "user-946", 0), ("checkout.new-pricing", "user-1128", 999),
    ("checkout.new-pricing", "user-431", 249), ("checkout.new-pricing", "user-31", 250),
    ("a", "user-1", 474), ("b", "user-1", 302),
]


@pytest.mark.parametrize(("flag_key", "targeting_key", "expected"), PINNED_BUCKETS)
def test_bucket_values_are_pinned(flag_key, targeting_key, expected):
    assert bucket(flag_key, targeting_key) == expected


@pytest.mark.parametrize(("user", "position", "variant"), [
    ("user-946", 0, "on"), ("user-431", 249, "on"),      # the last bucket of the 25 %
    ("user-31", 250, "off"), ("user-1128", 999, "off"),  # the first bucket past it, and the very last
])
def test_split_boundaries_are_exact(user, position, variant):
    split = {"conditions": [], "split": [{"variant": "on", "weight": 25}, {"variant": "off", "weight": 75}]}
    flag = compile_flag(spec([split]), 1)
    assert bucket(flag.key, user) == position
    assert evaluate(flag, "production", {"targetingKey": user}) == (variant, "SPLIT")


def test_a_tenth_of_a_percent_is_exactly_one_bucket():
    tiny = {"conditions": [], "split": [{"variant": "on", "weight": 0.1}, {"variant": "off", "weight": 99.9}]}
    flag = compile_flag(spec([tiny]), 1)
    assert evaluate(flag, "production", {"targetingKey": "user-946"}) == ("on", "SPLIT")   # bucket 0
    assert evaluate(flag, "production", {"targetingKey": "user-1200"}) == ("off", "SPLIT")  # bucket 1


def test_split_has_a_resolution_of_a_tenth_of_a_percent():
    tiny = {"conditions": [], "split": [{"variant": "on", "weight": 0.1}, {"variant": "off", "weight": 99.9}]}
    flag = compile_flag(spec([tiny]), 1)
    hits = sum(evaluate(flag, "production", {"targetingKey": str(uuid.uuid4())})[0] == "on" for _ in range(20000))
    assert 5 <= hits <= 40, hits
    with pytest.raises(ValidationError, match=r"0\.1 percent"):
        spec([{"conditions": [], "split": [{"variant": "on", "weight": 0.05}, {"variant": "off", "weight": 99.95}]}])
    with pytest.raises(ValidationError, match="add up to 100"):
        spec([{"conditions": [], "split": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 49}]}])


def test_split_without_targeting_key_is_an_error():
    flag = compile_flag(spec([{"conditions": [], "split": [{"variant": "on", "weight": 100}]}]), 1)
    with pytest.raises(EvaluationError) as caught:
        evaluate(flag, "production", {"country": "de"})
    assert caught.value.code == "TARGETING_KEY_MISSING"


@pytest.mark.parametrize(("change", "message"), [
    ({"variants": {"on": 1, "off": "x"}, "type": "number"}, "not of the flag's type number"),
    ({"default_variant": "nope"}, "unknown variant"),
    ({"environments": {"production": {"enabled": True, "rules": [rule("a", "equals", 1, "ghost")]}}},
     "unknown variant"),
    ({"environments": {"production": {"rules": [rule("a", "matches", "(")]}}}, "invalid regular expression"),
    ({"environments": {"production": {"rules": [rule("a", "semver_gt", "one")]}}}, "semantic version"),
    ({"environments": {"production": {"rules": [rule("a", "in", "x")]}}}, "needs a list"),
    ({"key": "Bad Key"}, "String should match pattern"),
    ({"temporary": True}, "remove_after"),
    ({"off_variant": None}, "a string flag must name its off_variant"),
    ({"off_variant": "ghost"}, "off_variant: 'ghost'"),
    ({"type": "boolean", "variants": {"on": True, "also": True}, "default_variant": "on", "off_variant": None},
     "needs a variant whose value is false"),
])
def test_invalid_specs_say_why(change, message):
    with pytest.raises(ValidationError, match=message):
        spec(**change)


@pytest.mark.parametrize("rules", [[], [rule("plan", "equals", "pro", "beta")],
                                   [{"conditions": [], "split": [{"variant": "on", "weight": 50},
                                                                 {"variant": "beta", "weight": 50}]}]])
@pytest.mark.parametrize("env_default", ["on", "off"])
def test_a_disabled_environment_serves_the_off_variant(rules, env_default):
    data = spec(rules, enabled=False).model_dump()
    data["environments"]["production"]["default_variant"] = env_default
    data["default_variant"] = "on"
    flag = compile_flag(FlagSpec.model_validate(data), 1)
    for context in ({}, {"plan": "pro", "targetingKey": "u-1"}):
        assert evaluate(flag, "production", context) == ("off", "DISABLED")
    assert evaluate(flag, "no-such-environment", {}) == ("off", "DISABLED")


def test_a_boolean_flag_defaults_its_off_variant_to_false():
    flag = FlagSpec.model_validate({"key": "k", "type": "boolean", "variants": {"yes": True, "no": False},
                                    "default_variant": "yes", "environments": {"production": {"enabled": False}}})
    assert flag.off_variant == "no"
    assert evaluate(compile_flag(flag, 1), "production", {}) == ("no", "DISABLED")
