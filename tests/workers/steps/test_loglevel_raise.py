"""loglevel.raise against a real database and Redis: it raises, announces, and its compensation ends it."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from server.auth.models import Actor, Role, Source
from server.db import session_scope
from server.loglevels import service
from server.loglevels.steps import LogLevelRaiseInputs
from server.loglevels.sync import channel
from server.runbooks.catalog import CATALOG
from workers.steps.base import StepContext, StepFailed, load_step_kinds


@pytest.fixture(scope="module")
def incident(make_incident):
    return make_incident()


def _ctx(settings, engine, incident) -> StepContext:
    actor = Actor(name="alice", role=Role.operator, source=Source.api)
    return StepContext(run_id=41, step_id="verbose-db", attempt=1, actor=actor, incident_id=incident,
                       settings=settings, engine=engine)


def _next_message(subscriber) -> bytes | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the subscribe confirmation comes first and reads as None
        message = subscriber.get_message(timeout=0.5)
        if message is not None:
            return message["data"]
    return None


def test_raise_then_compensate(settings, engine, redis_url, incident):
    step = load_step_kinds()["loglevel.raise"]()
    assert CATALOG["loglevel.raise"].compensates and step.has_compensation()
    name = f"svc-{uuid.uuid4().hex[:8]}"
    subscriber = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel(settings))
    try:
        inputs = LogLevelRaiseInputs.model_validate({"service": name, "logger": "app.db", "level": "debug",
                                                     "for": "15m"})
        outputs = step.run(inputs, _ctx(settings, engine, incident))
        assert outputs["level"] == "DEBUG" and outputs["expires_at"]
        assert _next_message(subscriber) == name.encode()
        with session_scope(engine) as session:
            levels = service.effective_levels(session, service=name)
            row = service.get_override(session, override_id=outputs["override_id"])
            assert levels.loggers["app.db"].level == "DEBUG"
            assert row.created_by == "alice" and row.incident_id == incident and row.reason == "run 41, step verbose-db"

        step.compensate(inputs, outputs, _ctx(settings, engine, incident))
        with session_scope(engine) as session:
            assert service.effective_levels(session, service=name).loggers == {}
            row = service.get_override(session, override_id=outputs["override_id"])
            assert row.ended_by == "alice" and row.end_reason == "end"
        assert _next_message(subscriber) == name.encode()
    finally:
        subscriber.close()


def test_the_rails_fail_the_step_with_the_reason(settings, engine, incident):
    step = load_step_kinds()["loglevel.raise"]()
    inputs = LogLevelRaiseInputs.model_validate({"service": "svc-x", "logger": "app", "level": "TRACE"})
    with pytest.raises(StepFailed, match="needs `for`"):
        step.run(inputs, _ctx(settings, engine, incident))
    with pytest.raises(ValueError, match="unknown log level"):
        LogLevelRaiseInputs.model_validate({"service": "svc-x", "logger": "app", "level": "LOUD"})
