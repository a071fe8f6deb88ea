"""The in-memory journal (workers/journal_memory.py) and the real one (workers/journal.py, over the test
database and Redis) behave the same under the engine: the same events stored in the same order, the same
rows, followers told of every stored event in order, and the same answer when the run is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from server.auth.models import Actor, Role, Source
from server.db import session_scope
from server.models_base import utcnow
from server.runbooks.schema import Runbook
from server.runbooks.validation import check_text
from server.runs import events
from server.runs.models import Run, RunEvent, RunStatus, StepRun, StepStatus
from server.runs.service import create_run
from server.settings import Settings
from workers.engine import execute_with
from workers.journal import DbJournal, Journal, RunLost
from workers.journal_memory import MemoryStore

ACTOR = Actor(name="contract", role=Role.operator, source=Source.system)
TRIO = """title: Contract
params: {n: {type: integer, default: 2}}
steps:
  - {id: hello, uses: log, with: {message: "hello"}}
  - {id: skipped, uses: log, if: "params.n > 5", with: {message: never}}
  - {id: talk, uses: shell, with: {argv: [sh, -c, "echo one; sleep 0.3; echo two"]}}
  - {id: gated, uses: log, approval: required, with: {message: gated}}
  - {id: check, uses: assert, with: {that: "params.n == 2"}}
outputs: {greeting: "{{ steps.hello.outputs.message }}", n: "{{ params.n }}"}
"""
SLOW = "title: Slow\nsteps:\n  - {id: slow, uses: wait, with: {duration: 30s}}\n"


def _definition(run: Run) -> Runbook | None:
    return check_text(run.definition, f"{run.runbook_id}.yaml").runbook


class Subject:
    """One journal implementation behind the few operations the contract needs."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine

    def add(self, text: str) -> int: ...
    def execute(self, run_id: int) -> str: ...
    def approve(self, run_id: int, step_id: str) -> None: ...
    def lose(self, run_id: int) -> None: ...
    def claim(self, run_id: int) -> Journal: ...
    def take_over(self, run_id: int) -> None: ...
    def run(self, run_id: int) -> Run: ...
    def steps(self, run_id: int) -> dict[str, StepRun]: ...
    def stored(self, run_id: int) -> list[tuple[str, str | None]]: ...
    def published(self, run_id: int) -> list[dict[str, Any]]: ...


class Memory(Subject):
    def __init__(self, settings: Settings, engine: Engine) -> None:
        super().__init__(settings, engine)
        self.store = MemoryStore()

    def add(self, text: str) -> int:
        return self.store.add_run(text, queue=self.settings.default_queue, params={"n": 2})

    def execute(self, run_id: int) -> str:
        return execute_with(self.store.claimer(self.settings), run_id, self.settings.default_queue,
                            settings=self.settings, engine=self.engine)

    def approve(self, run_id: int, step_id: str) -> None:
        self.store.approve(run_id, step_id)

    def lose(self, run_id: int) -> None:
        self.store.lost.add(run_id)

    def claim(self, run_id: int) -> Journal:
        got = self.store.claimer(self.settings)(run_id, _definition)
        assert got.journal is not None, got.why
        return got.journal

    def take_over(self, run_id: int) -> None:
        self.store.take_over(run_id)

    def run(self, run_id: int) -> Run:
        return self.store.run(run_id)

    def steps(self, run_id: int) -> dict[str, StepRun]:
        return {s.step_id: s for s in self.store.steps[run_id]}

    def stored(self, run_id: int) -> list[tuple[str, str | None]]:
        return [(t, s) for t, s, _d in self.store.events(run_id)]

    def published(self, run_id: int) -> list[dict[str, Any]]:
        return self.store.published(run_id)


class Database(Subject):
    def __init__(self, settings: Settings, engine: Engine) -> None:
        super().__init__(settings, engine)
        self.client = redis.Redis.from_url(settings.redis_url or "")
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(events.channel(settings, 0).replace(":0:", ":*:"))
        self.heard: dict[int, list[dict[str, Any]]] = {}

    def add(self, text: str) -> int:
        checked = check_text(text, "contract.yaml")
        with session_scope(self.engine) as session:
            given = {"n": 2} if "params:" in text else {}
            run, _steps = create_run(session, checked=checked, given=given, actor=ACTOR, settings=self.settings)
            assert run.id is not None
            return run.id

    def execute(self, run_id: int) -> str:
        claim = lambda rid, definition: DbJournal.claim(self.settings, self.engine, self.client, rid,  # noqa: E731
                                                        definition=definition)
        return execute_with(claim, run_id, self.settings.default_queue, settings=self.settings, engine=self.engine)

    def approve(self, run_id: int, step_id: str) -> None:
        with session_scope(self.engine) as session:
            session.execute(update(StepRun).where(StepRun.run_id == run_id, StepRun.step_id == step_id)
                            .values(approval="approved", approval_by="approver"))
            session.execute(update(Run).where(Run.id == run_id).values(status="queued"))

    def lose(self, run_id: int) -> None:
        with session_scope(self.engine) as session:
            session.execute(update(Run).where(Run.id == run_id).values(worker="elsewhere:1"))

    def claim(self, run_id: int) -> Journal:
        got = DbJournal.claim(self.settings, self.engine, self.client, run_id, definition=_definition)
        assert got.journal is not None, got.why
        return got.journal

    def take_over(self, run_id: int) -> None:  # what the reaper does to a run whose worker was lost
        with session_scope(self.engine) as session:
            session.execute(update(Run).where(Run.id == run_id).values(epoch=Run.epoch + 1, status="queued"))

    def run(self, run_id: int) -> Run:
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            assert run is not None
            return run

    def steps(self, run_id: int) -> dict[str, StepRun]:
        with Session(self.engine) as session:
            return {s.step_id: s for s in session.exec(select(StepRun).where(StepRun.run_id == run_id))}

    def stored(self, run_id: int) -> list[tuple[str, str | None]]:
        with Session(self.engine) as session:
            rows = session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
            return [(e.type, e.step_id) for e in rows if e.type != "run.queued"]  # written by the api, not us

    def published(self, run_id: int) -> list[dict[str, Any]]:
        quiet_until = time.monotonic() + 0.5  # read until nothing came for half a second
        while time.monotonic() < quiet_until:
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None and message.get("type") == "pmessage":
                for m in orjson.loads(message["data"]):
                    self.heard.setdefault(m["run_id"], []).append(m)
                quiet_until = time.monotonic() + 0.5
        return self.heard.get(run_id, [])

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture(params=["memory", "database"])
def subject(request: pytest.FixtureRequest, tmp_path, engine: Engine, settings: Settings) -> Iterator[Subject]:
    own = settings.model_copy(update={"artifacts_dir": tmp_path, "run_heartbeat_interval": 0.2,
                                      "default_queue": f"contract-{uuid.uuid4().hex[:6]}"})
    made: Callable[[Settings, Engine], Subject] = Memory if request.param == "memory" else Database
    subject = made(own, engine)
    yield subject
    if isinstance(subject, Database):
        subject.close()


def test_a_run_stores_and_announces_the_same_things(subject: Subject):
    run_id = subject.add(TRIO)
    assert subject.execute(run_id) == "waiting for approval"
    subject.approve(run_id, "gated")
    assert subject.execute(run_id) == "succeeded"
    assert subject.stored(run_id) == [
        ("run.started", None), ("step.started", "hello"), ("step.finished", "hello"), ("step.finished", "skipped"),
        ("step.started", "talk"), ("step.finished", "talk"), ("step.waiting_approval", "gated"),
        ("run.resumed", None), ("step.started", "gated"), ("step.finished", "gated"),
        ("step.started", "check"), ("step.finished", "check"), ("run.finished", None)]
    steps = subject.steps(run_id)
    assert {k: s.status for k, s in steps.items()} == {"hello": "succeeded", "skipped": "skipped",
                                                        "talk": "succeeded", "gated": "succeeded",
                                                        "check": "succeeded"}
    assert steps["talk"].outputs is not None and steps["talk"].outputs["stdout"] == "one\ntwo\n"
    assert steps["talk"].attempts == 1 and steps["gated"].approval == "approved"
    run = subject.run(run_id)
    assert run.status == "succeeded" and run.outputs == {"greeting": "hello", "n": 2} and run.worker is not None
    # Enum-typed status columns: read back as the enums on both databases (stored as VARCHAR values).
    assert run.status is RunStatus.succeeded and all(isinstance(s.status, StepStatus) for s in steps.values())
    heard = subject.published(run_id)
    assert [(m["type"], m["step_id"]) for m in heard if m["id"] is not None] == subject.stored(run_id)
    lines = [(m["type"], m["data"].get("line")) for m in heard]
    talk_started = lines.index(("step.started", None), 2)  # the talk step's (hello's is earlier)
    assert lines.index(("step.output", "one")) > talk_started and lines.index(("step.output", "two")) > talk_started


def test_a_lost_run_is_let_go_of_without_another_write(subject: Subject):
    run_id = subject.add(SLOW)
    threading.Timer(0.5, subject.lose, args=(run_id,)).start()
    assert subject.execute(run_id) == "failed"
    assert subject.run(run_id).status == "running"
    assert ("run.finished", None) not in subject.stored(run_id)


def test_a_finished_run_is_not_claimed_again(subject: Subject):
    run_id = subject.add(SLOW.replace("wait, with: {duration: 30s}", "log, with: {message: quick}"))
    assert subject.execute(run_id) == "succeeded"
    assert subject.execute(run_id) == "run is succeeded"


def test_a_run_taken_over_fences_every_write_of_its_old_journal(subject: Subject):
    """Fencing by epoch: once the reaper re-queued the run and another worker claimed it, the old journal
    (a worker that was cut off, now back) commits nothing: not a step, not an event, not the run's end."""
    run_id = subject.add(SLOW)
    old = subject.claim(run_id)
    old.write_claim()
    subject.take_over(run_id)
    new = subject.claim(run_id)
    stale, fresh = old.steps[0], new.steps[0]
    stale.status, stale.started_at, stale.attempts = StepStatus.running, utcnow(), 1
    old.step_started(stale, ("step.started", {"uses": "wait"}))
    with pytest.raises(RunLost):
        old.save(stale)
    assert old.heartbeat() == (False, False)
    with pytest.raises(RunLost):
        old.save(event=(None, "run.note", {"from": "the stale worker"}))
    old.run.status, old.run.finished_at, old.run.error = RunStatus.failed, utcnow(), "stale"
    with pytest.raises(RunLost):
        old.save(run=True, event=(None, "run.finished", {"status": "failed"}))
    with subject.engine.begin() as conn, pytest.raises(RunLost):
        old.fenced(conn)  # an artifact's own transaction: nothing of it is written
    old.release()

    assert new.heartbeat() == (True, False)
    fresh.status, fresh.started_at, fresh.finished_at, fresh.attempts = StepStatus.succeeded, utcnow(), utcnow(), 1
    new.save(fresh, event=("slow", "step.finished", {"status": "succeeded"}))
    new.run.status, new.run.finished_at = RunStatus.succeeded, utcnow()
    new.save(run=True, event=(None, "run.finished", {"status": "succeeded"}))
    new.release()
    assert subject.stored(run_id) == [("run.started", None), ("run.resumed", None), ("step.finished", "slow"),
                                      ("run.finished", None)]
    run = subject.run(run_id)
    assert run.status == "succeeded" and run.error is None and run.epoch == 3  # claim, take-over, claim
    assert subject.steps(run_id)["slow"].status == "succeeded"
