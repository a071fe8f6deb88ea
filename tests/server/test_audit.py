"""The audit log: one event per mutation in the same transaction, hash chain, paging, verify and export."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from server.audit import service as audit
from server.audit.retention import prune
from server.auth import service as auth
from server.auth.models import Actor, Role
from server.db import make_engine, session_scope
from server.errors import Conflict
from server.models_base import utcnow
from tests.conftest import TEST_ACTOR
from tests.support import http


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"RUNBOOKD_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _seed(database_url: str, count: int) -> None:
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        for i in range(count):
            auth.create_token(session, name=f"seed-{i}", role=Role.viewer, actor=TEST_ACTOR)
    engine.dispose()


def test_mutation_and_its_event_share_one_transaction(base_url, admin_token):
    with http(base_url, admin_token) as client:
        created = client.post("/api/v1/tokens", json={"name": "audited", "role": "viewer"},
                              headers={"X-Request-ID": "req-audited-1"})
        assert created.status_code == 201
        page = client.get("/api/v1/audit", params={"target_type": "token", "target_id": created.json()["id"]})
    [event] = page.json()["items"]
    assert event["action"] == "token.create"
    assert event["source"] == "api"
    assert event["request_id"] == "req-audited-1"
    assert event["after"]["name"] == "audited"
    assert event["before"] is None
    assert created.json()["token"] not in json.dumps(event)


def test_verify_names_the_altered_event(fresh_database_url):
    _seed(fresh_database_url, 5)
    ok = _cli(fresh_database_url, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "5 events verified" in ok.stderr
    engine = make_engine(fresh_database_url)
    with engine.begin() as conn:
        after = conn.execute(text("SELECT after FROM audit_events WHERE id = 3")).scalar_one()
        after = json.loads(after) if isinstance(after, str) else after
        after["role"] = "admin"
        conn.execute(text("UPDATE audit_events SET after = :a WHERE id = 3"), {"a": json.dumps(after)})
    engine.dispose()
    broken = _cli(fresh_database_url, "audit", "verify")
    assert broken.returncode == 1
    assert "event 3" in broken.stderr and "altered" in broken.stderr


# Every field the chain promises to protect, and a forged value for it. A hash that stops covering one lets that
# field be rewritten unseen; each must make verify name the event.
TAMPERED = {
    "actor": "mallory", "source": "chat", "action": "token.delete", "target_type": "flag", "target_id": "other",
    "before": {"role": "viewer"}, "after": {"role": "admin"}, "reason": "nothing to see", "incident_id": "INC-999",
    "request_id": "req-forged", "ts": None,  # ts: moved one second
}


def test_verify_names_the_event_whatever_hashed_field_was_altered(fresh_database_url):
    from server.audit.models import AuditEvent

    _seed(fresh_database_url, 5)
    engine = make_engine(fresh_database_url)
    try:
        for field, forged in TAMPERED.items():
            with session_scope(engine) as session:
                event = session.get(AuditEvent, 3)
                original = getattr(event, field)
                setattr(event, field, original + timedelta(seconds=1) if field == "ts" else forged)
            with session_scope(engine) as session:
                result = audit.verify(session)
            assert not result.ok and result.event_id == 3, (field, result)
            assert "event 3" in result.problem and "altered" in result.problem, (field, result.problem)
            with session_scope(engine) as session:
                setattr(session.get(AuditEvent, 3), field, original)
            with session_scope(engine) as session:
                assert audit.verify(session).ok, f"restoring {field} should mend the chain"
        assert set(TAMPERED) == set(audit.HASHED_FIELDS) - {"id"}
    finally:
        engine.dispose()


def test_verify_names_where_an_event_was_removed(fresh_database_url):
    _seed(fresh_database_url, 5)
    engine = make_engine(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = 2"))
    engine.dispose()
    broken = _cli(fresh_database_url, "audit", "verify")
    assert broken.returncode == 1
    assert "event 3 does not follow event 1" in broken.stderr


def test_verify_notices_the_newest_event_removed(fresh_database_url):
    _seed(fresh_database_url, 3)
    engine = make_engine(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = 3"))
    engine.dispose()
    broken = _cli(fresh_database_url, "audit", "verify")
    assert broken.returncode == 1
    assert "events after 2 were removed" in broken.stderr


def test_concurrent_writers_keep_one_unbroken_chain(fresh_database_url):
    engine = make_engine(fresh_database_url)

    def create(i: int) -> None:
        with session_scope(engine) as session:
            auth.create_token(session, name=f"racer-{i}", role=Role.viewer, actor=TEST_ACTOR)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(40)))
    with session_scope(engine) as session:
        result = audit.verify(session)
    engine.dispose()
    assert result.ok, result.problem
    assert result.checked == 40


def test_paging_is_stable_while_events_are_added(base_url, admin_token, make_token):
    for i in range(5):
        make_token(Role.viewer, name=f"pager-{i}")
    seen: list[int] = []
    with http(base_url, admin_token) as client:
        first = client.get("/api/v1/audit", params={"action": "token.*", "limit": 2}).json()
        seen += [e["id"] for e in first["items"]]
        make_token(Role.viewer, name="pager-late")  # lands on top; must not shift the next page
        cursor = first["next_cursor"]
        while cursor:
            page = client.get("/api/v1/audit", params={"action": "token.*", "limit": 2, "cursor": cursor}).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen))
    with http(base_url, admin_token) as client:
        bad = client.get("/api/v1/audit", params={"cursor": "abc"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "cursor"


def test_filters_by_actor_and_time(base_url, admin_token, make_token):
    make_token(Role.viewer, name="filter-me")
    with http(base_url, admin_token) as client:
        by_actor = client.get("/api/v1/audit", params={"actor": "pytest", "limit": 500}).json()["items"]
        future = client.get("/api/v1/audit", params={"since": "2999-01-01T00:00:00Z"}).json()["items"]
    assert by_actor and all(e["actor"] == "pytest" for e in by_actor)
    assert future == []


def test_export_writes_jsonl_in_chain_order(fresh_database_url, tmp_path):
    _seed(fresh_database_url, 4)
    out = tmp_path / "audit.jsonl"
    done = _cli(fresh_database_url, "audit", "export", "--format", "jsonl", "-o", str(out))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in events] == [1, 2, 3, 4]
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(events))
    unsupported = _cli(fresh_database_url, "audit", "export", "--format", "csv")
    assert unsupported.returncode == 2 and "jsonl" in unsupported.stderr


def test_prune_refuses_to_remove_events_that_fail_verification(fresh_database_url, tmp_path):
    _seed(fresh_database_url, 6)
    engine = make_engine(fresh_database_url)
    with engine.begin() as conn:  # backdating the first four events also breaks their hashes
        conn.execute(text("UPDATE audit_events SET ts = :old WHERE id <= 4"), {"old": utcnow() - timedelta(days=100)})
    with session_scope(engine) as session, pytest.raises(Conflict, match="event 1 fails verification"):
        prune(session, older_than=timedelta(days=90), archive_dir=tmp_path, actor=Actor.system())
    engine.dispose()
    # Nothing was removed: the rows are all still there.
    engine = make_engine(fresh_database_url)
    with session_scope(engine) as session:
        assert audit.count(session) == 6
    engine.dispose()


def test_prune_then_verify_starts_from_the_checkpoint(fresh_database_url, tmp_path):
    _seed(fresh_database_url, 6)
    engine = make_engine(fresh_database_url)
    with session_scope(engine) as session:
        # "older than 0 seconds" from a moment in the future: everything so far is old.
        result = prune(session, older_than=timedelta(seconds=1), archive_dir=tmp_path, actor=Actor.system(),
                       now=utcnow() + timedelta(seconds=5))
    assert result.removed == 6 and result.through_id == 6
    archived = [json.loads(line) for line in gzip.open(result.archive).read().splitlines()]
    assert [e["id"] for e in archived] == [1, 2, 3, 4, 5, 6]
    with session_scope(engine) as session:
        auth.create_token(session, name="after-prune", role=Role.viewer, actor=TEST_ACTOR)
    engine.dispose()
    ok = _cli(fresh_database_url, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "2 events verified" in ok.stderr  # the audit.prune event and the token made after it
