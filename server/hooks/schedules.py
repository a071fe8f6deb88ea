"""Cron triggers: beat calls tick() every second; each due slot of each schedule rule starts one run.

A slot is an idempotency key (rule + slot time), and ticks are serialised with deliveries, so a restarted beat
or two beats by mistake start at most one run per slot. Slots that passed while beat was down (older than
ON_TIME_S when first seen) are skipped and recorded in a `schedule` delivery, unless the rule says
`catch_up: true`, which starts them (at most MAX_CATCH_UP, oldest first).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from server.hooks import rules as rules_mod
from server.hooks import service
from server.hooks.models import ScheduleState
from server.hooks.rules import Rule
from server.models_base import as_utc, utcnow
from server.runbooks import service as runbooks
from server.settings import Settings

log = logging.getLogger("runbookd.hooks")
ON_TIME_S = 30.0     # a slot first seen later than this after its time was missed
MAX_CATCH_UP = 100   # catch_up starts at most this many missed slots per rule per tick
MAX_SCAN = 10_000    # slots looked at per rule per tick (a `* * * * *` rule down for a week is ~10k)


def due_slots(rule: Rule, last: datetime | None, now: datetime) -> list[tuple[datetime, str | None]]:
    """The rule's slots after `last` up to `now` (UTC), each with why it is skipped (None: start it)."""
    spec = rule.spec.schedule
    assert spec is not None
    zone = ZoneInfo(spec.timezone)
    start = last if last is not None else now - timedelta(seconds=ON_TIME_S)
    it = croniter(spec.cron, start.astimezone(zone))
    slots: list[datetime] = []
    while len(slots) < MAX_SCAN:
        slot = it.get_next(datetime).astimezone(ZoneInfo("UTC"))
        if slot > now:
            break
        slots.append(slot)
    out: list[tuple[datetime, str | None]] = []
    missed = [s for s in slots if (now - s).total_seconds() > ON_TIME_S]
    caught = set(missed[-MAX_CATCH_UP:]) if spec.catch_up else set()
    for slot in slots:
        if slot in missed and slot not in caught:
            why = "missed: beat was not running at this slot" + (
                f" (catch_up starts the last {MAX_CATCH_UP} only)" if spec.catch_up else "; set catch_up: true to run "
                "missed slots")
            out.append((slot, why))
        else:
            out.append((slot, None))
    return out


def tick(engine: Engine, settings: Settings, *, now: datetime | None = None) -> int:
    """Start the runs of every due slot; returns how many started."""
    snapshot = runbooks.store_for(settings.runbooks_dir).snapshot()
    schedules = rules_mod.rules_for(settings.runbooks_dir, snapshot).schedules()
    if not schedules:
        return 0
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as session:
        service.lock_deliveries(session)
        ids = [r.id for r in schedules]
        states = {s.rule_id: s for s in session.exec(select(ScheduleState).where(col(ScheduleState.rule_id).in_(ids)))}
        due: list[tuple[Rule, datetime, str | None]] = []
        for rule in schedules:
            state = states.get(rule.id)
            slots = due_slots(rule, as_utc(state.last_slot) if state else None, now)
            if not slots:
                if state is None:  # remember from when on this rule is watched, so the next tick has a start
                    session.add(ScheduleState(rule_id=rule.id, last_slot=now - timedelta(seconds=ON_TIME_S)))
                continue
            due += [(rule, slot, why) for slot, why in slots]
            if state is None:
                state = ScheduleState(rule_id=rule.id, last_slot=slots[-1][0])
            state.last_slot, state.updated_at = slots[-1][0], utcnow()
            session.add(state)
        if not due:
            session.commit()
            return 0
        outcome = service.process_slots(session, due=due, runbooks=snapshot.runbooks, settings=settings)
        session.commit()
    service.send_runs(engine, settings, outcome.dispatch)
    if outcome.delivery.started or outcome.delivery.suppressed:
        log.info("schedule slots", extra={"started": outcome.delivery.started,
                                          "skipped_or_suppressed": outcome.delivery.suppressed})
    return outcome.delivery.started
