"""Flag CRUD over real HTTP: versions with diffs, audit with before/after, rollback, soft delete, ETag/If-Match."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from server.auth.models import Role
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http


def test_create_read_update_and_versions(api, make_flag, make_incident):
    inc = make_incident()
    flag = make_flag(tags=["checkout"], owner="team-payments", enabled=True)
    key = flag["key"]
    assert flag["version"] == 1
    assert set(flag["spec"]["environments"]) >= {"production", "staging"}
    assert flag["spec"]["environments"]["production"]["enabled"] is True

    got = api.get(f"/api/v1/flags/{key}")
    assert got.headers["etag"] == '"1"'
    changed = api.patch(f"/api/v1/flags/{key}", json={
        "environments": {"production": {"enabled": False}}, "reason": f"turn off for {inc}", "incident_id": inc})
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"2"'
    assert changed.json()["spec"]["environments"]["production"] == {"enabled": False, "default_variant": None,
                                                                    "rules": []}
    assert changed.json()["spec"]["environments"]["staging"]["enabled"] is True  # untouched

    versions = api.get(f"/api/v1/flags/{key}/versions").json()
    assert [v["version"] for v in versions] == [2, 1]
    latest = versions[0]
    assert latest["actor"].startswith("operator-") and latest["reason"] == f"turn off for {inc}"
    assert latest["incident_id"] == inc
    assert latest["diff"] == [{"op": "replace", "path": "/environments/production/enabled", "value": False}]
    assert api.get(f"/api/v1/flags/{key}/versions/1").json()["spec"]["environments"]["production"]["enabled"]
    assert key in [f["key"] for f in api.get("/api/v1/flags", params={"tag": "checkout"}).json()]


def test_every_change_is_audited_with_before_and_after(api, make_flag, make_incident):
    inc = make_incident()
    key = make_flag()["key"]
    api.patch(f"/api/v1/flags/{key}", json={"description": "new words", "incident_id": inc, "reason": "r"})
    events = api.get("/api/v1/audit", params={"target_type": "flag", "target_id": key}).json()["items"]
    assert [e["action"] for e in events] == ["flag.update", "flag.create"]
    update = events[0]
    assert update["before"]["version"] == 1 and update["before"]["spec"]["description"] == "test flag"
    assert update["after"]["version"] == 2 and update["after"]["spec"]["description"] == "new words"
    assert update["incident_id"] == inc and update["reason"] == "r"



def _leaves(value, prefix=""):
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}/{k}"))
        return out
    return {prefix or "/": value}


def test_every_write_records_before_and_after_in_one_shape(api, make_flag):
    """A flag's audit before/after carry the same keys on every write (create included), so a diff of the
    first update lists only what the user changed, and a timed change's end shows on both sides."""
    key = make_flag()["key"]
    api.patch(f"/api/v1/flags/{key}", json={"description": "new words"})
    api.patch(f"/api/v1/flags/{key}", json={"default_variant": "on", "for": "1h"})
    api.patch(f"/api/v1/flags/{key}", json={"tags": ["later"]})
    events = api.get("/api/v1/audit", params={"target_type": "flag", "target_id": key}).json()["items"][::-1]
    create, first, timed, later = events
    assert create["before"] is None
    assert set(create["after"]) == set(first["before"]) == set(first["after"]) == set(later["before"])
    before, after = _leaves(first["before"]), _leaves(first["after"])
    changed = {path for path in before.keys() | after.keys() if before.get(path, "?") != after.get(path, "?")}
    assert changed == {"/version", "/spec/description"}, changed
    assert timed["after"]["expires_at"] is not None and later["before"]["expires_at"] == timed["after"]["expires_at"]
    assert later["before"]["superseded_expiries"] is None
    assert later["after"]["superseded_expiries"] == [{"version": 3, "expires_at": timed["after"]["expires_at"]}]
    assert later["after"]["expires_at"] is None

def test_rollback_writes_a_new_version_equal_to_the_old_one(api, make_flag):
    key = make_flag(variants={"on": True, "off": False}, enabled=True)["key"]
    api.patch(f"/api/v1/flags/{key}", json={"default_variant": "on"})
    api.patch(f"/api/v1/flags/{key}", json={"environments": {"staging": {"enabled": False}}})
    rolled = api.post(f"/api/v1/flags/{key}/rollback", json={"to_version": 1, "reason": "bad change"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 4
    v1, v4 = (api.get(f"/api/v1/flags/{key}/versions/{n}").json() for n in (1, 4))
    assert v4["spec"] == v1["spec"] and v4["action"] == "flag.rollback" and v4["reason"] == "bad change"
    missing = api.post(f"/api/v1/flags/{key}/rollback", json={"to_version": 99})
    assert missing.status_code == 404


def test_soft_delete_restore_and_key_reuse(api, make_flag, base_url, client_token):
    key = make_flag(enabled=True, default_variant="on")["key"]
    deleted = api.delete(f"/api/v1/flags/{key}", params={"reason": "cleanup"})
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert api.get(f"/api/v1/flags/{key}").status_code == 404
    assert key not in [f["key"] for f in api.get("/api/v1/flags").json()]
    with http(base_url, client_token) as client:
        assert client.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {}}).status_code == 404
    restored = api.post(f"/api/v1/flags/{key}/restore", json={"reason": "oops"})
    assert restored.status_code == 200 and restored.json()["deleted"] is False and restored.json()["version"] == 3
    with http(base_url, client_token) as client:
        assert client.post(f"/ofrep/v1/evaluate/flags/{key}", json={"context": {}}).json()["value"] is True

    api.delete(f"/api/v1/flags/{key}")
    again = api.post("/api/v1/flags", json=flag_body(key, type="string", variants={"a": "x"}, default_variant="a",
                                                     off_variant="a"))
    assert again.status_code == 201, again.text
    assert again.json()["version"] == 5 and again.json()["spec"]["type"] == "string"
    assert api.post("/api/v1/flags", json=flag_body(key)).status_code == 409


def test_stale_if_match_gets_412_and_changes_nothing(api, make_flag):
    key = make_flag()["key"]
    first = api.patch(f"/api/v1/flags/{key}", json={"description": "one"}, headers={"If-Match": '"1"'})
    assert first.status_code == 200 and first.headers["etag"] == '"2"'
    stale = api.patch(f"/api/v1/flags/{key}", json={"description": "two"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "precondition_failed"
    assert stale.headers["etag"] == '"2"'
    current = api.get(f"/api/v1/flags/{key}").json()
    assert current["version"] == 2 and current["spec"]["description"] == "one"
    assert len(api.get(f"/api/v1/flags/{key}/versions").json()) == 2
    assert api.post(f"/api/v1/flags/{key}/rollback", json={"to_version": 1},
                    headers={"If-Match": '"1"'}).status_code == 412
    assert api.delete(f"/api/v1/flags/{key}", headers={"If-Match": '"1"'}).status_code == 412


def test_fifty_concurrent_updates_lose_nothing(base_url, operator_token, make_flag):
    key = make_flag()["key"]

    def blind_update(i: int) -> int:
        with http(base_url, operator_token) as client:
            response = client.patch(f"/api/v1/flags/{key}", json={"description": f"writer {i}"})
        return response.status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(blind_update, range(50)))
    assert statuses == [200] * 50
    with http(base_url, operator_token) as client:
        versions = client.get(f"/api/v1/flags/{key}/versions").json()
    # Each of the 50 writes got its own version, and each version follows the one before it.
    assert sorted(v["version"] for v in versions) == list(range(1, 52))
    assert sorted(v["spec"]["description"] for v in versions[:-1]) == sorted(f"writer {i}" for i in range(50))

    def conditional_update(i: int) -> int:
        with http(base_url, operator_token) as client:
            response = client.patch(f"/api/v1/flags/{key}", json={"description": f"racer {i}"},
                                    headers={"If-Match": '"51"'})
        return response.status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(conditional_update, range(50)))
    assert sorted(statuses) == [200] + [412] * 49
    with http(base_url, operator_token) as client:
        assert client.get(f"/api/v1/flags/{key}").json()["version"] == 52


def test_bad_input_gets_a_clear_422(api):
    bad_type = api.post("/api/v1/flags", json=flag_body(new_key(), variants={"on": "yes", "off": False}))
    assert bad_type.status_code == 422
    assert "not of the flag's type boolean" in bad_type.json()["error"]["message"]
    bad_env = api.post("/api/v1/flags", json=flag_body(new_key(), environments={"mars": {"enabled": True}}))
    assert bad_env.status_code == 422 and "mars" in bad_env.json()["error"]["message"]
    bad_key = api.post("/api/v1/flags", json=flag_body("Not A Key"))
    assert bad_key.status_code == 422
    key = new_key()
    assert api.post("/api/v1/flags", json=flag_body(key)).status_code == 201
    unknown = api.patch(f"/api/v1/flags/{key}", json={"enabled": False})
    assert unknown.status_code == 422 and unknown.json()["error"]["details"][0]["field"] == "enabled"
    assert api.get(f"/api/v1/flags/{key}").json()["version"] == 1
    both = api.post("/api/v1/flags", json=flag_body(new_key(), **{"for": "1h", "expires_at": "2099-01-01T00:00:00Z"}))
    assert both.status_code == 422


def test_environments_can_be_added(base_url, admin_token, api, make_flag):
    name = new_key("env")[:20]
    with http(base_url, admin_token) as admin:
        created = admin.post("/api/v1/flag-environments", json={"name": name, "description": "canary"})
    assert created.status_code == 201, created.text
    assert name in [e["name"] for e in api.get("/api/v1/flag-environments").json()]
    key = make_flag(environments={name: {"enabled": True, "default_variant": "on"}})["key"]
    assert api.get(f"/api/v1/flags/{key}").json()["spec"]["environments"][name]["enabled"] is True


def test_viewers_read_and_clients_cannot(base_url, make_token, make_flag):
    key = make_flag()["key"]
    with http(base_url, make_token(Role.viewer)) as viewer:
        assert viewer.get(f"/api/v1/flags/{key}").status_code == 200
        assert viewer.patch(f"/api/v1/flags/{key}", json={"description": "x"}).status_code == 403
    with http(base_url, make_token(Role.client)) as client:
        assert client.get(f"/api/v1/flags/{key}").status_code == 403


def test_the_list_shows_each_flags_own_pending_timed_changes(api, make_flag):
    timed, plain = make_flag(enabled=True)["key"], make_flag(enabled=True)["key"]
    killed = api.patch(f"/api/v1/flags/{timed}", json={"environments": {"production": {"enabled": False}},
                                                       "for": "30m", "reason": "kill for a while"})
    assert killed.status_code == 200, killed.text
    listed = {f["key"]: f for f in api.get("/api/v1/flags").json()}
    assert [(p["version"], p["revert_to"], p["reason"]) for p in listed[timed]["pending_expiries"]] == [
        (2, 1, "kill for a while")]
    assert listed[plain]["pending_expiries"] == []
    assert listed[timed]["pending_expiries"] == api.get(f"/api/v1/flags/{timed}").json()["pending_expiries"]
