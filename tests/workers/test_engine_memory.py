"""The engine's behaviour, in-process against the in-memory journal: retries, conditions, approvals,
rollback, timeouts, cancel, outputs. Real step kinds run (log, assert, shell, wait); no database, broker
or worker. tests/server/runs/ keeps a smaller set against the real database and a real worker, and
tests/workers/test_journal_contract.py holds the fake to the real journal's behaviour."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from server.redaction import MASK
from server.runbooks.kinds import REGISTERED, StepInputs, register_kind
from server.settings import Settings
from workers.engine import execute_with
from workers.journal_memory import MemoryStore
from workers.steps.base import REGISTRY, Step, StepContext, register

QUEUE = "memq"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def mem_settings(tmp_path: Path) -> Settings:
    return Settings(database_url="sqlite://", redis_url=None, artifacts_dir=tmp_path, default_queue=QUEUE,
                    run_heartbeat_interval=0.2)


def run(store: MemoryStore, settings: Settings, text: str, **kwargs: Any) -> tuple[int, str]:
    run_id = store.add_run("title: test\n" + text.lstrip("\n"), queue=QUEUE, **kwargs)
    return run_id, again(store, settings, run_id)


def again(store: MemoryStore, settings: Settings, run_id: int) -> str:
    return execute_with(store.claimer(settings), run_id, QUEUE, settings=settings, engine=create_engine("sqlite://"))


def statuses(store: MemoryStore, run_id: int) -> dict[str, str]:
    return {s.step_id: s.status for s in store.steps[run_id]}


def test_steps_run_in_order_and_outputs_render_with_native_types(store, mem_settings):
    run_id, outcome = run(store, mem_settings, """
params: {n: {type: integer, default: 2}}
steps:
  - {id: hello, uses: log, with: {message: "hello"}}
  - {id: check, uses: assert, with: {that: "params.n + 1 > params.n"}}
outputs: {n: "{{ params.n }}", greeting: "{{ steps.hello.outputs.message }}"}
""", params={"n": 2})
    assert outcome == "succeeded"
    assert store.run(run_id).outputs == {"n": 2, "greeting": "hello"}
    assert statuses(store, run_id) == {"hello": "succeeded", "check": "succeeded"}
    types = [t for t, _s, _d in store.events(run_id)]
    assert types == ["run.started", "step.started", "step.finished", "step.started", "step.finished", "run.finished"]
    stored = [m["type"] for m in store.published(run_id) if m["id"] is not None]
    assert stored == types, "followers hear every stored event, in order"


def test_retries_count_attempts_and_announce_each_retry(store, mem_settings, tmp_path):
    marker = tmp_path / "marker"
    run_id, outcome = run(store, mem_settings, f"""
steps:
  - id: flaky
    uses: shell
    retry: {{attempts: 3, backoff: 10ms}}
    with: {{argv: [sh, -c, 'if [ -e "$1" ]; then echo 42; else touch "$1"; exit 3; fi', sh, "{marker}"]}}
""")
    assert outcome == "succeeded"
    flaky = store.step(run_id, "flaky")
    assert flaky.attempts == 2 and flaky.outputs["stdout"].strip() == "42"
    assert [t for t, _s, _d in store.events(run_id)].count("step.retrying") == 1


def test_retries_give_up_after_the_last_attempt(store, mem_settings):
    run_id, outcome = run(store, mem_settings, """
steps:
  - {id: never, uses: assert, retry: {attempts: 3, backoff: 1ms}, with: {that: "1 == 2", message: nope}}
  - {id: after, uses: log, with: {message: unreachable}}
""")
    assert outcome == "failed"
    assert store.step(run_id, "never").attempts == 3
    assert statuses(store, run_id)["after"] == "pending"
    assert "nope" in (store.run(run_id).error or "")


def test_conditions_skip_run_and_reject_non_booleans(store, mem_settings):
    run_id, outcome = run(store, mem_settings, """
on_failure: continue
steps:
  - {id: probe, uses: log, with: {message: "42"}}
  - {id: when-42, uses: log, if: "steps.probe.outputs.message == '42'", with: {message: "yes"}}
  - {id: when-not, uses: log, if: "steps.probe.outputs.message != '42'", with: {message: "no"}}
  - {id: not-a-bool, uses: log, if: "steps.probe.outputs.message", with: {message: never}}
""")
    assert outcome == "failed"
    assert statuses(store, run_id) == {"probe": "succeeded", "when-42": "succeeded", "when-not": "skipped",
                                       "not-a-bool": "failed"}
    assert "not true/false" in (store.step(run_id, "not-a-bool").error or "")


def test_approval_parks_the_run_and_resumes_after_the_decision(store, mem_settings):
    text = """
steps:
  - {id: first, uses: log, with: {message: first}}
  - {id: gated, uses: log, approval: required, with: {message: gated}}
  - {id: last, uses: log, with: {message: last}}
"""
    run_id, outcome = run(store, mem_settings, text)
    assert outcome == "waiting for approval"
    assert store.run(run_id).status == "waiting_approval" and store.step(run_id, "gated").approval == "waiting"
    assert again(store, mem_settings, run_id) == "run is waiting_approval"
    store.approve(run_id, "gated")
    assert again(store, mem_settings, run_id) == "succeeded"
    assert statuses(store, run_id) == {"first": "succeeded", "gated": "succeeded", "last": "succeeded"}
    assert [t for t, _s, _d in store.events(run_id)].count("run.resumed") == 1

    rejected, _ = run(store, mem_settings, text)
    store.approve(rejected, "gated", approve=False, reason="not now")
    assert again(store, mem_settings, rejected) == "failed"
    assert store.step(rejected, "gated").error == "rejected by approver: not now"


class UndoableInputs(StepInputs):
    name: str


UNDONE: list[str] = []


@pytest.fixture
def undoable() -> Iterator[None]:
    """A compensating kind of the test's own, registered for the test only."""
    register_kind("test.undoable", UndoableInputs, "A test kind that records its undo.", compensates=True)

    @register("test.undoable")
    class Undoable(Step[UndoableInputs]):
        def run(self, inputs: UndoableInputs, ctx: StepContext) -> dict[str, Any]:
            return {"did": inputs.name}

        def compensate(self, inputs: UndoableInputs, outputs: dict[str, Any], ctx: StepContext) -> None:
            UNDONE.append(outputs["did"])

    UNDONE.clear()
    try:
        yield
    finally:
        REGISTERED.pop("test.undoable", None)
        REGISTRY.pop("test.undoable", None)


def test_rollback_undoes_finished_steps_newest_first(store, mem_settings, undoable):
    run_id, outcome = run(store, mem_settings, """
on_failure: rollback
steps:
  - {id: one, uses: test.undoable, with: {name: one}}
  - {id: two, uses: test.undoable, with: {name: two}}
  - {id: boom, uses: assert, with: {that: "false", message: boom}}
""")
    assert outcome == "failed"
    assert UNDONE == ["two", "one"]
    assert store.step(run_id, "one").compensated == "done" and store.step(run_id, "two").compensated == "done"
    assert [d for t, _s, d in store.events(run_id) if t == "step.compensated"] == [{"ok": True}, {"ok": True}]


def test_a_step_timeout_kills_it_and_the_run_timeout_ends_the_run(store, mem_settings):
    started = time.monotonic()
    run_id, outcome = run(store, mem_settings, """
steps:
  - {id: overrun, uses: shell, timeout: 300ms, with: {argv: [sleep, "30"]}}
  - {id: after, uses: log, with: {message: never}}
""")
    assert outcome == "failed" and time.monotonic() - started < 10
    assert statuses(store, run_id) == {"overrun": "timed_out", "after": "pending"}
    assert store.step(run_id, "overrun").error == "timed out after 0.3s"

    run_id, outcome = run(store, mem_settings, """
timeout: 1s
steps:
  - {id: quick, uses: log, with: {message: quick}}
  - {id: slow, uses: wait, with: {duration: 30s}}
""")
    assert outcome == "timed_out"
    assert statuses(store, run_id) == {"quick": "succeeded", "slow": "timed_out"}


def test_a_cancel_stops_a_running_step(store, mem_settings):
    run_id = store.add_run("title: test\nsteps:\n  - {id: slow, uses: wait, with: {duration: 30s}}\n"
                           "  - {id: next, uses: log, with: {message: never}}\n", queue=QUEUE)
    threading.Timer(0.3, lambda: store.cancel_by.__setitem__(run_id, "alice")).start()
    started = time.monotonic()
    assert again(store, mem_settings, run_id) == "cancelled"
    assert time.monotonic() - started < 5
    assert store.run(run_id).error == "cancelled by alice"
    assert statuses(store, run_id) == {"slow": "cancelled", "next": "cancelled"}


def test_a_run_lost_to_another_worker_writes_nothing_more(store, mem_settings):
    run_id = store.add_run("title: test\nsteps:\n  - {id: slow, uses: wait, with: {duration: 30s}}\n", queue=QUEUE)
    threading.Timer(0.3, lambda: store.lost.add(run_id)).start()
    assert again(store, mem_settings, run_id) == "failed"
    assert store.run(run_id).status == "running", "the run is left to whoever took it"
    assert "run.finished" not in [t for t, _s, _d in store.events(run_id)]


def test_dry_run_renders_inputs_and_secrets_never_reach_outputs_or_lines(store, mem_settings):
    text = """
params: {token: {type: string, secret: true}}
steps:
  - {id: echo, uses: shell, with: {argv: [echo, "token={{ params.token }}"]}}
outputs: {said: "{{ steps.echo.outputs.stdout }}"}
"""
    run_id, outcome = run(store, mem_settings, text, secrets={"token": "s3cr3t-value"})
    assert outcome == "succeeded"
    assert "s3cr3t-value" not in str(store.run(run_id).outputs) and "s3cr3t-value" not in str(store.published(run_id))
    assert store.run(run_id).secrets is None
    dry, outcome = run(store, mem_settings, text, secrets={"token": "s3cr3t-value"}, dry_run=True)
    assert outcome == "succeeded" and statuses(store, dry) == {"echo": "skipped"}
    assert store.step(dry, "echo").outputs["inputs"]["argv"] == ["echo", f"token={MASK}"]


def test_a_step_on_another_queue_hands_the_run_over(store, mem_settings):
    run_id, outcome = run(store, mem_settings, """
steps:
  - {id: here, uses: log, with: {message: here}}
  - {id: there, uses: log, on: elsewhere, with: {message: there}}
""")
    assert outcome == "handed over to elsewhere"
    assert store.handed_over == [(run_id, "elsewhere")] and store.run(run_id).status == "queued"
    assert store.run(run_id).queue == "elsewhere"


def test_output_lines_follow_their_steps_start(store, mem_settings):
    run_id, _ = run(store, mem_settings, """
steps:
  - {id: talk, uses: shell, with: {argv: [sh, -c, "echo one; sleep 0.3; echo two"]}}
""")
    published = [(m["type"], (m.get("data") or {}).get("line")) for m in store.published(run_id)]
    started = published.index(("step.started", None))
    assert published.index(("step.output", "one")) > started and published.index(("step.output", "two")) > started


def test_a_failing_step_keeps_its_outputs_and_error(store, mem_settings):
    run_id, outcome = run(store, mem_settings, "steps:\n  - {id: bad, uses: shell, with: {argv: [sh, -c, "
                          "'echo out; echo err >&2; exit 4']}}\n")
    assert outcome == "failed"
    bad = store.step(run_id, "bad")
    assert bad.outputs["exit_code"] == 4 and "exited with 4" in (bad.error or "")
