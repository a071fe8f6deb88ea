"""Cron triggers against a real database: one run per slot however many beats tick, missed slots skipped and
recorded unless catch_up, slots in the rule's time zone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlmodel import delete, select

from server.db import session_scope
from server.dispatch_queue import TRIGGER_SCHEDULES_TASK, make_celery
from server.hooks import schedules
from server.hooks.models import HookDelivery, ScheduleState, TriggerFiring
from server.runs.models import Run
from tests.server.hooks.conftest import PROBE, unique


@pytest.fixture
def sched(settings, tmp_path):
    (tmp_path / "probe.yaml").write_text(PROBE)

    def make(cron: str, timezone: str = "Europe/Berlin", catch_up: bool = False, dedupe: bool = False):
        rule = unique("cron")
        (tmp_path / f"{rule}.triggers.yaml").write_text(f"""triggers:
  - id: {rule}
    runbook: probe
    schedule: {{cron: "{cron}", timezone: {timezone}, catch_up: {str(catch_up).lower()}}}
    dedupe: {str(dedupe).lower()}
    params: {{service: health, instance: "{{{{ slot }}}}"}}
""")
        return rule, settings.model_copy(update={"runbooks_dir": tmp_path})

    return make


def runs_of(engine, rule):
    with session_scope(engine) as session:
        ids = session.exec(select(TriggerFiring.run_id).where(TriggerFiring.rule_id == rule,
                                                              TriggerFiring.action == "run")).all()
        return list(session.exec(select(Run).where(Run.id.in_(ids)).order_by(Run.id)))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_each_slot_starts_one_run_even_with_two_beats(sched, engine):
    rule, settings = sched("*/15 * * * *")
    assert schedules.tick(engine, settings, now=at("2026-12-02T10:00:05+01:00")) == 1
    assert schedules.tick(engine, settings, now=at("2026-12-02T10:00:06+01:00")) == 0
    assert schedules.tick(engine, settings, now=at("2026-12-02T10:14:59+01:00")) == 0
    started: list[int] = []
    barrier = threading.Barrier(2)

    def beat():
        barrier.wait()
        started.append(schedules.tick(engine, settings, now=at("2026-12-02T10:15:01+01:00")))

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(started) == [0, 1]
    # A beat that lost its state (a new database row, say) still finds the slot's key and starts nothing.
    with session_scope(engine) as session:
        session.exec(delete(ScheduleState).where(ScheduleState.rule_id == rule))
    schedules.tick(engine, settings, now=at("2026-12-02T10:15:20+01:00"))
    done = runs_of(engine, rule)
    assert [r.params["instance"] for r in done] == ["2026-12-02T09:00:00+00:00", "2026-12-02T09:15:00+00:00"]
    assert {r.actor for r in done} == {"hook:schedule"}


def test_missed_slots_are_skipped_and_recorded_unless_catch_up(sched, engine):
    rule, settings = sched("*/15 * * * *")
    assert schedules.tick(engine, settings, now=at("2026-12-02T10:00:02+01:00")) == 1
    # beat was down from 10:01 to 11:20 (Berlin): five slots passed
    assert schedules.tick(engine, settings, now=at("2026-12-02T11:20:00+01:00")) == 0
    with session_scope(engine) as session:
        row = session.exec(select(HookDelivery).where(HookDelivery.source == "schedule")
                           .order_by(HookDelivery.id.desc())).first()
    skipped = [d for d in row.result["decisions"] if d["rule"] == rule]
    assert [d["slot"] for d in skipped] == ["2026-12-02T09:15:00+00:00", "2026-12-02T09:30:00+00:00",
                                            "2026-12-02T09:45:00+00:00",
                                            "2026-12-02T10:00:00+00:00", "2026-12-02T10:15:00+00:00"]
    assert {d["outcome"] for d in skipped} == {"skipped"}
    assert skipped[0]["reason"].startswith("missed: beat was not running")
    assert len(runs_of(engine, rule)) == 1

    caught, settings2 = sched("0 * * * *", timezone="UTC", catch_up=True)
    assert schedules.tick(engine, settings2, now=at("2026-12-02T06:00:01+00:00")) == 1
    assert schedules.tick(engine, settings2, now=at("2026-12-02T09:30:00+00:00")) == 3
    assert [r.params["instance"][11:16] for r in runs_of(engine, caught)] == ["06:00", "07:00", "08:00", "09:00"]


def test_a_schedule_waits_while_its_last_run_is_active_with_dedupe(sched, engine):
    rule, settings = sched("* * * * *", timezone="UTC", dedupe=True)
    assert schedules.tick(engine, settings, now=at("2026-12-02T06:00:01+00:00")) == 1
    assert schedules.tick(engine, settings, now=at("2026-12-02T06:01:01+00:00")) == 0  # the 06:00 run is queued
    with session_scope(engine) as session:
        row = session.exec(select(HookDelivery).where(HookDelivery.source == "schedule")
                           .order_by(HookDelivery.id.desc())).first()
    [decision] = [d for d in row.result["decisions"] if d["rule"] == rule]
    assert decision["outcome"] == "suppressed" and "still queued" in decision["reason"]


def test_slots_follow_the_rules_time_zone(sched, engine):
    rule, settings = sched("0 9 * * *", timezone="Europe/Berlin")
    assert schedules.tick(engine, settings, now=at("2026-12-02T08:00:10+00:00")) == 1  # 09:00 CET
    assert schedules.tick(engine, settings, now=at("2026-12-02T09:00:10+00:00")) == 0
    [run] = runs_of(engine, rule)
    assert run.params["instance"] == "2026-12-02T08:00:00+00:00"


def test_beat_ticks_the_schedules_every_second(settings):
    entry = make_celery(settings).conf.beat_schedule["trigger-schedules"]
    assert entry["task"] == TRIGGER_SCHEDULES_TASK and entry["schedule"].total_seconds() == 1
    from workers.tasks import app

    assert TRIGGER_SCHEDULES_TASK in app.tasks
