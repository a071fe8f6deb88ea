"""A run's journal: everything the engine persists or announces about a run, behind one small interface.

The engine (workers/engine.py) decides what happens; the journal claims the run, records a step's start
and end and the run's events, commits, and publishes to followers after each commit. `DbJournal` is the
real one (PostgreSQL or SQLite, with Redis for followers); workers/journal_memory.py holds an in-memory
fake held to the same contract (tests/workers/test_journal_contract.py), in the spirit of httpx's
MockTransport. The speed work of bench/run_dispatch.py lives here, not in the engine: a first claim held
open and written with the first results, the deferred commit of quick side-effect-free steps, and
publishing after commit (docs/architecture.md has the figures).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, Engine, bindparam, exists, select, update

from server.db import unreachable
from server.runs import events
from server.runs.models import Run, RunStatus, StepRun
from server.runs.service import send_run
from server.settings import Settings
from workers import claims

TAKEN_OVER = "the run was taken over or ended by another worker, the reaper or a cancel"
DEFER_WINDOW_S = 0.1  # the longest a finished step's result waits in memory for the next commit
SAVE_RETRY_S = 0.5  # between tries of a save while the database is unreachable
log = logging.getLogger("runbookd.engine")
# What the engine changes on its rows; a save writes these columns and no others.
STEP_PROGRESS = ("status", "attempts", "started_at", "finished_at", "outputs", "error", "approval", "compensated")
RUN_PROGRESS = ("status", "queue", "worker", "dispatched_at", "finished_at", "error", "secrets", "outputs")
# Steps by (run, step id): a run's first claim builds its pending rows without reading their ids back.
STEP_KEY = ("run_id", "step_id")
SAVE_STEP, SAVE_RUN = claims.row_update(StepRun, STEP_PROGRESS, STEP_KEY), claims.row_update(Run, RUN_PROGRESS)
# Fencing (claims.CLAIMED): every write of the run's progress matches only the epoch this worker claimed, in
# the statement the save runs anyway (no extra round trip). The run's row: its UPDATE says `AND epoch = mine`.
# Step rows saved without the run's row: `AND EXISTS (the run at my epoch, FOR KEY SHARE)`, which PostgreSQL
# runs once per statement before touching a step row (an InitPlan, the run's row locked first as the reaper
# and claims do), and which keeps the reaper or a claimer from moving the epoch on until this commit.
_RUNS = claims._RUNS
_MINE = (_RUNS.c.id == bindparam("fence_run")) & (_RUNS.c.epoch == bindparam("fence_epoch"))
SAVE_RUN_FENCED = SAVE_RUN.where(_RUNS.c.epoch == bindparam("fence_epoch"))
FENCE = select(_RUNS.c.id).where(_MINE).with_for_update(read=True, key_share=True)  # alone: events only (rare)
SAVE_STEP_FENCED = SAVE_STEP.where(exists(FENCE))
UNDISPATCHED = update(_RUNS).where(_MINE, _RUNS.c.status == RunStatus.queued).values(dispatched_at=None)

Event = tuple[str, dict[str, Any]]  # (type, data) of an event to store
Entry = events.Item | dict[str, Any]  # an event to store, or an output line (a message) to publish in its place
Definition = claims.Definition


class RunLost(Exception):
    """The run is no longer ours (taken over or ended by another worker, the reaper or a cancel): nothing
    of it is ours to write; the engine lets go of it."""

    def __init__(self) -> None:
        super().__init__(TAKEN_OVER)


class Journal(Protocol):
    """What the engine needs to persist and announce a run it claimed."""

    run: Run
    steps: list[StepRun]  # the run's step rows as claimed, in order; the engine changes them in place

    def step_started(self, row: StepRun, event: Event) -> None:
        """A step's start: followers hear of it with the row's next save; stored with it too."""

    def step_running(self, row: StepRun) -> None:
        """The step takes a while: store (and publish) its start now if it is not stored yet."""

    def line(self, message: dict[str, Any]) -> None:
        """A step's output line: published (never stored), never before its step's start."""

    def save(self, row: StepRun | None = None, *, run: bool = False, event: tuple[str | None, str, dict[str, Any]] |
             None = None, defer: bool = False) -> None:
        """Commit the row (and the run's row when `run`) with the event, then publish. `defer` allows the
        journal to keep a finished side-effect-free step's result for the next save (at most
        DEFER_WINDOW_S). Raises RunLost when the run turned out not to be ours."""

    def write_claim(self) -> None:
        """Before a step acts outside the run: make sure the claim is written (a redelivered twin then
        cannot act too)."""

    def fenced(self, conn: Connection) -> None:
        """Inside a write's own transaction (an artifact's): raise RunLost unless the run is still ours."""

    def heartbeat(self) -> tuple[bool, bool]:
        """(still ours, cancel requested in the database)."""

    def cancel_requested_by(self) -> str | None:
        """Who asked to cancel through Redis (the fast path), if anyone."""

    def hand_over(self, queue: str) -> None:
        """The run was saved as queued on another queue: send it there."""

    def ended(self, status: RunStatus) -> None:
        """The run's end was saved: clean up what only a live run needs."""

    def release(self) -> None:
        """Let go of anything still held (a first claim never written is rolled back)."""


@dataclass
class Claimed:
    """claim()'s answer: a journal for the run, or why not (and when to try again)."""

    journal: Journal | None
    why: str = ""
    retry_in: float | None = None


class DbJournal:
    """The journal over the database (Core statements on a progress connection) and Redis."""

    def __init__(self, settings: Settings, engine: Engine, client: redis.Redis | None, got: claims.Claim) -> None:
        assert got.run is not None and got.run.id is not None
        self.settings, self.engine, self.redis = settings, engine, client
        self.run: Run = got.run
        self.run_id: int = got.run.id
        self.steps = got.steps
        self.held: Connection | None = got.held  # a first claim not written yet: written with the next save
        # A step's start noted but not stored yet, and the output lines printed meanwhile (see line()).
        self.unsaved: list[Entry] = []
        self.deferred_rows: list[StepRun] = []  # finished, committed with the next save
        self.deferred_events: list[Entry] = []
        self.deferred_since = 0.0
        self.unpublished: list[dict[str, Any]] = []  # stored, to go out with the next publish
        # Held while publishing and while touching `unsaved`: a step's thread prints lines meanwhile.
        self.lock = threading.Lock()
        if got.started:  # a held claim: run.started is stored with the first save, the claim's own write
            self.deferred_events.append(got.started)
            self.deferred_since = time.monotonic()
        if got.event:  # run.started goes out with the first step's events, one publish less
            self.unpublished.append(got.event)

    @classmethod
    def claim(cls, settings: Settings, engine: Engine, client: redis.Redis | None, run_id: int, *,
              definition: Definition) -> Claimed:
        got = claims.claim(engine, settings, run_id, definition=definition)
        if got.run is None:
            return Claimed(None, why=got.why, retry_in=got.retry_in)
        return Claimed(cls(settings, engine, client, got))

    # -- publishing -----------------------------------------------------------------------------------
    def _publish(self, messages: list[dict[str, Any]]) -> None:  # under self.lock: one at a time, in order
        messages, self.unpublished = [*self.unpublished, *messages], []
        events.publish(self.redis, self.settings, self.run_id, messages)

    def line(self, message: dict[str, Any]) -> None:
        # While the step's start is not stored yet, the line waits behind it and goes out with the step's
        # next save: followers never see a line before its step.started.
        with self.lock:
            if self.unsaved:
                self.unsaved.append(message)
            else:
                self._publish([message])

    def step_started(self, row: StepRun, event: Event) -> None:
        with self.lock:
            self.unsaved.append((row.step_id, *event))

    def step_running(self, row: StepRun) -> None:
        if self.unsaved:
            self.save(row)

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, row: StepRun | None = None, *, run: bool = False,
             event: tuple[str | None, str, dict[str, Any]] | None = None, defer: bool = False) -> None:
        taken: list[Entry] = []
        if row is not None:
            with self.lock:  # left in place until published: lines printed meanwhile queue behind
                taken = list(self.unsaved)
        entries = [*taken, *([event] if event is not None else [])]
        now = time.monotonic()
        waiting = self.deferred_rows or self.deferred_events
        if defer and row is not None and (not waiting or now - self.deferred_since < DEFER_WINDOW_S):
            if not waiting:
                self.deferred_since = now
            with self.lock:  # the step has ended: nothing prints after `taken`
                self.unsaved = []
            self.deferred_rows.append(row)
            self.deferred_events += entries
            return
        rows, self.deferred_rows = [*self.deferred_rows, *([row] if row is not None else [])], []
        entries, self.deferred_events = [*self.deferred_events, *entries], []
        items = [e for e in entries if isinstance(e, tuple)]
        stored: list[dict[str, Any]] = []
        # A commit that a database restart cut wrote nothing: try it again (up to RUNBOOKD_RUN_DB_WAIT), so the
        # step that just ran is recorded once. Not a held first claim's: it dies with its connection.
        retry_until = time.monotonic() + self.settings.run_db_wait if self.held is None else 0.0
        while True:
            try:
                with self._transaction(run=run, steps=bool(rows)) as conn:
                    if rows:
                        values = [claims.row_values(r, STEP_PROGRESS, STEP_KEY) for r in rows]
                        if run:  # the run's row, written first, was fenced (and is locked) already
                            conn.execute(SAVE_STEP, values)
                        else:
                            fence = self.fence()
                            if conn.execute(SAVE_STEP_FENCED, [{**v, **fence} for v in values]).rowcount < len(rows):
                                raise RunLost
                    if items:
                        stored = events.record_many(conn, run_id=self.run_id, items=items)
                break
            except RunLost:
                with self.lock:
                    self.unsaved = []
                raise
            except Exception as exc:
                if not unreachable(exc) or time.monotonic() >= retry_until:
                    raise
                log.warning("journal write retried: database unreachable", extra={"run_id": self.run_id})
                time.sleep(SAVE_RETRY_S)
        in_order = iter(stored)  # stored events replace their items; lines stay where they were printed
        messages = [next(in_order) if isinstance(e, tuple) else e for e in entries]
        with self.lock:
            late, self.unsaved = [e for e in self.unsaved[len(taken):] if isinstance(e, dict)], []  # lines only
            self._publish([*messages, *late])

    def fence(self) -> dict[str, Any]:
        """The parameters of a fenced statement: this run at the epoch this worker claimed."""
        return {"fence_run": self.run_id, "fence_epoch": self.run.epoch}

    @contextlib.contextmanager
    def _transaction(self, *, run: bool, steps: bool = False) -> Iterator[Connection]:
        """A save's transaction, the run's row written first when `run`: a new one, or the held first
        claim's, the claim written first, with the run's row in the same statement (see claims.claim).
        Raises RunLost, nothing written, when the run's epoch is no longer this worker's (fencing)."""
        held, self.held = self.held, None
        if held is None:
            with claims.progress_connection(self.engine, self.settings) as conn:  # rolled back on RunLost
                if run:
                    if not conn.execute(SAVE_RUN_FENCED, {**claims.row_values(self.run, RUN_PROGRESS),
                                                          **self.fence()}).rowcount:
                        self.deferred_rows, self.deferred_events = [], []
                        raise RunLost
                elif not steps and conn.execute(FENCE, self.fence()).first() is None:
                    raise RunLost  # events alone (the step rows' statement is fenced by the caller)
                yield conn
            return
        with held:  # closing it without the commit rolls back
            if not claims.take(held, self.run, also=RUN_PROGRESS if run else ()):
                self.deferred_rows, self.deferred_events = [], []
                raise RunLost
            yield held
            held.commit()

    def write_claim(self) -> None:
        if self.held is not None:
            self.save()

    def fenced(self, conn: Connection) -> None:
        """The run's row is key-share locked at this worker's epoch until `conn` commits: no take-over in between."""
        self.write_claim()
        if conn.execute(FENCE, self.fence()).first() is None:
            raise RunLost

    def release(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None

    # -- the run's state outside its rows --------------------------------------------------------------
    def heartbeat(self) -> tuple[bool, bool]:
        self.write_claim()  # the heartbeat asks whether the run is ours: a claim not written yet is not
        return claims.heartbeat(self.engine, self.run_id, self.run.epoch)

    def cancel_requested_by(self) -> str | None:
        if self.redis is None:
            return None
        try:
            by = self.redis.get(events.cancel_key(self.settings, self.run_id))
        except redis.RedisError:
            return None
        if by is None:
            return None
        return by.decode(errors="replace") if isinstance(by, bytes) else str(by)

    def hand_over(self, queue: str) -> None:
        if not send_run(self.settings, self.run_id, queue):  # leave it to the relay, unless claimed meanwhile
            with claims.progress_connection(self.engine, self.settings) as conn:
                conn.execute(UNDISPATCHED, self.fence())

    def ended(self, status: RunStatus) -> None:
        if status == RunStatus.cancelled and self.redis is not None:  # other cancel keys expire within a day
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(events.cancel_key(self.settings, self.run_id))
