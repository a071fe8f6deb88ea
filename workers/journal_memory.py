"""An in-memory run journal (the fake beside workers/journal.py's DbJournal), for running the engine
in-process in tests: no database, no Redis, no worker. tests/workers/test_journal_contract.py holds it and
DbJournal to the same behaviour.

    store = MemoryStore()
    run_id = store.add_run(runbook_text, params={"x": 1})
    execute_with(store.claimer(settings), run_id, "default", settings=settings, engine=engine)
    store.events(run_id)      # the stored events' types and data, in order
    store.published(run_id)   # every message followers got, in order (lines included)
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from server.models_base import as_utc, utcnow
from server.runs.models import Run, RunStatus, StepRun
from server.runs.service import pending_steps
from server.settings import Settings
from workers.journal import RUN_PROGRESS, Claimed, Definition, Event, RunLost


@dataclass
class MemoryStore:
    """What the database and Redis hold for runs, in memory. Tests set `lost`, `cancel_in_db` and
    `cancel_by` to play another worker, the reaper, or someone cancelling, and call take_over() to play the
    reaper re-queueing a run whose worker was lost (its epoch moves on: the old journal is fenced)."""

    runs: dict[int, Run] = field(default_factory=dict)
    steps: dict[int, list[StepRun]] = field(default_factory=dict)
    stored: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    batches: dict[int, list[list[dict[str, Any]]]] = field(default_factory=dict)
    handed_over: list[tuple[int, str]] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)
    cancel_in_db: set[int] = field(default_factory=set)
    cancel_by: dict[int, str] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _event_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_run(self, definition: str, *, runbook_id: str = "test", params: dict[str, Any] | None = None,
                secrets: dict[str, Any] | None = None, dry_run: bool = False, queue: str = "default",
                actor: str = "tester", incident_id: str | None = None) -> int:
        run_id = next(self._ids)
        self.runs[run_id] = Run(id=run_id, runbook_id=runbook_id, definition=definition, params=params or {},
                                secrets=secrets, dry_run=dry_run, queue=queue, actor=actor, incident_id=incident_id,
                                runbook_hash=hashlib.sha256(definition.encode()).hexdigest(),
                                status=RunStatus.queued, created_at=utcnow())
        self.stored[run_id], self.batches[run_id] = [], []
        return run_id

    def claimer(self, settings: Settings) -> Any:
        """The `claim` argument of workers.engine.execute_with."""
        return lambda run_id, definition: MemoryJournal.claim(self, settings, run_id, definition=definition)

    # -- what tests read --------------------------------------------------------------------------------
    def run(self, run_id: int) -> Run:
        return self.runs[run_id]

    def step(self, run_id: int, step_id: str) -> StepRun:
        return next(s for s in self.steps[run_id] if s.step_id == step_id)

    def events(self, run_id: int) -> list[tuple[str, str | None, dict[str, Any] | None]]:
        return [(e["type"], e["step_id"], e["data"]) for e in self.stored[run_id]]

    def published(self, run_id: int) -> list[dict[str, Any]]:
        return [m for batch in self.batches[run_id] for m in batch]

    def take_over(self, run_id: int) -> None:
        """What the reaper does to a run whose worker was lost: queue it again under a new epoch."""
        with self.lock:
            stored = self.runs[run_id]
            stored.epoch, stored.status = stored.epoch + 1, RunStatus.queued
            stored.resumes = stored.resumes + 1
            stored.lost_workers = [*(stored.lost_workers or []), stored.worker or "unknown"]

    def approve(self, run_id: int, step_id: str, *, by: str = "approver", approve: bool = True,
                reason: str | None = None) -> None:
        """What the approval route does: decide, and queue the run again."""
        row = self.step(run_id, step_id)
        row.approval, row.approval_by, row.approval_reason = ("approved" if approve else "rejected"), by, reason
        self.runs[run_id].status = RunStatus.queued


class MemoryJournal:
    def __init__(self, store: MemoryStore, run: Run, steps: list[StepRun], started: dict[str, Any]) -> None:
        self.store = store
        self.run = run
        self.steps = steps
        self.run_id: int = run.id or 0
        self.unsaved: list[tuple[str | None, str, dict[str, Any] | None] | dict[str, Any]] = []
        self.unpublished = [started]

    @classmethod
    def claim(cls, store: MemoryStore, settings: Settings, run_id: int, *, definition: Definition) -> Claimed:
        with store.lock:
            stored = store.runs.get(run_id)
            if stored is None:
                return Claimed(None, why="no such run")
            status = stored.status
            if status.finished or status == RunStatus.waiting_approval:
                return Claimed(None, why=f"run is {status}")
            if status == RunStatus.running and run_id not in store.lost:
                return Claimed(None, why=f"run is held by live process {stored.worker}")
            runbook = definition(stored)
            now, first, previous = utcnow(), stored.started_at is None, stored.worker
            timeout = (runbook.timeout if runbook is not None else None) or \
                timedelta(seconds=settings.run_default_timeout)
            stored.status, stored.worker, stored.heartbeat_at = RunStatus.running, "memory:1", now
            stored.epoch += 1  # claims.CLAIMED: the journal's writes match only this epoch
            stored.started_at = stored.started_at or now
            stored.deadline_at = stored.deadline_at or as_utc(stored.started_at) + timeout
            store.lost.discard(run_id)
            if run_id not in store.steps and runbook is not None:
                store.steps[run_id] = pending_steps(run_id=run_id, runbook=runbook, incident_id=stored.incident_id)
            kind = "run.started" if first else "run.resumed"
            started = _store(store, run_id, [(None, kind, {"worker": stored.worker,
                                                           "previous_worker": None if first else previous})])
            # The engine works on copies, as on rows read from a database, and writes them back with save().
            journal = cls(store, copy.deepcopy(stored), copy.deepcopy(store.steps.get(run_id, [])), started[0])
            return Claimed(journal)

    def _publish(self, messages: list[dict[str, Any]]) -> None:
        messages, self.unpublished = [*self.unpublished, *messages], []
        if messages:
            self.store.batches[self.run_id].append(messages)

    def line(self, message: dict[str, Any]) -> None:
        with self.store.lock:
            if self.unsaved:
                self.unsaved.append(message)
            else:
                self._publish([message])

    def step_started(self, row: StepRun, event: Event) -> None:
        with self.store.lock:
            self.unsaved.append((row.step_id, *event))

    def step_running(self, row: StepRun) -> None:
        if self.unsaved:
            self.save(row)

    def _ours(self) -> bool:
        """The run is still this journal's: not lost, and at the epoch it claimed (fencing, as DbJournal)."""
        return self.run_id not in self.store.lost and self.store.runs[self.run_id].epoch == self.run.epoch

    def save(self, row: StepRun | None = None, *, run: bool = False,
             event: tuple[str | None, str, dict[str, Any]] | None = None, defer: bool = False) -> None:
        # `defer` is a speed hint the fake does not need: everything is "committed" at once.
        with self.store.lock:
            if not self._ours():
                self.unsaved = []
                raise RunLost
            entries = [*(self.unsaved if row is not None else []), *([event] if event is not None else [])]
            if row is not None:
                self.unsaved = []
            if row is not None:
                rows = self.store.steps[self.run_id]
                rows[next(i for i, r in enumerate(rows) if r.step_id == row.step_id)] = copy.deepcopy(row)
            if run:  # the columns the journal writes (RUN_PROGRESS), not the reaper's nor the claim's
                stored_run = self.store.runs[self.run_id]
                for name in RUN_PROGRESS:
                    setattr(stored_run, name, copy.deepcopy(getattr(self.run, name)))
            stored = iter(_store(self.store, self.run_id, [e for e in entries if isinstance(e, tuple)]))
            self._publish([next(stored) if isinstance(e, tuple) else e for e in entries])

    def write_claim(self) -> None:
        if not self._ours():
            raise RunLost

    def fenced(self, conn: Any) -> None:
        self.write_claim()

    def heartbeat(self) -> tuple[bool, bool]:
        with self.store.lock:
            ours = self._ours()
        return ours, ours and self.run_id in self.store.cancel_in_db

    def cancel_requested_by(self) -> str | None:
        return self.store.cancel_by.get(self.run_id)

    def hand_over(self, queue: str) -> None:
        self.store.handed_over.append((self.run_id, queue))

    def ended(self, status: RunStatus) -> None:
        if status == RunStatus.cancelled:
            self.store.cancel_by.pop(self.run_id, None)

    def release(self) -> None:
        pass


def _store(store: MemoryStore, run_id: int, items: list[tuple[str | None, str, dict[str, Any] | None]]
           ) -> list[dict[str, Any]]:
    ts = utcnow().isoformat()
    messages = [{"id": next(store._event_ids), "run_id": run_id, "ts": ts, "type": t, "step_id": s, "data": d}
                for s, t, d in items]
    store.stored[run_id].extend(messages)
    return messages
