"""A run's events changed through the API reach its followers once the change commits (server/aftercommit.py
on_commit), and never when it rolls back. No worker: the runs stay queued until cancelled."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import redis
from sqlmodel import Session

from server.auth.models import Actor, Role, Source
from server.redis_client import make_redis
from server.runs import events, service
from tests.support import start


@pytest.fixture
def listen(runs_settings) -> Iterator:
    client = make_redis(runs_settings)
    pubsub = client.pubsub(ignore_subscribe_messages=True)

    def subscribe(run_id: int) -> redis.client.PubSub:
        pubsub.subscribe(events.channel(runs_settings, run_id))
        pubsub.get_message(timeout=5)  # the subscription's confirmation: from here on nothing is missed
        return pubsub

    yield subscribe
    pubsub.close()
    client.close()


def _next_batch(pubsub: redis.client.PubSub, timeout: float = 20) -> list[dict]:
    message = pubsub.get_message(timeout=timeout)
    assert message is not None, "nothing was published"
    batch: list[dict] = orjson.loads(message["data"])
    return batch


def test_a_cancel_through_the_api_is_published_after_its_commit(operator, listen):
    run = start(operator, "approval")
    pubsub = listen(run["id"])
    response = operator.post(f"/api/v1/runs/{run['id']}/cancel", json={"reason": "published?"})
    assert response.status_code == 200, response.text
    batch = _next_batch(pubsub)
    assert [m["type"] for m in batch][-1] == "run.finished"
    assert batch[-1]["data"]["status"] == "cancelled" and all(m["run_id"] == run["id"] for m in batch)
    stored = operator.get(f"/api/v1/runs/{run['id']}").json()
    assert stored["status"] == "cancelled"  # what was published had been committed


def test_nothing_is_published_when_the_change_rolls_back(operator, listen, runs_settings, engine):
    run = start(operator, "approval")
    pubsub = listen(run["id"])
    client = make_redis(runs_settings)
    try:
        with Session(engine, expire_on_commit=False) as session:
            ghost = Actor(name="rolled-back", role=Role.operator, source=Source.api)
            service.cancel(session, run_id=run["id"], actor=ghost, reason="never happened",
                           settings=runs_settings, client=client)  # registers its publish for the commit
            session.rollback()
    finally:
        client.close()
    # The real cancel publishes after its commit: the first batch to arrive must be that one, not the ghost's.
    assert operator.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 200
    batch = _next_batch(pubsub)
    assert "rolled-back" not in orjson.dumps(batch).decode()
    assert batch[-1]["type"] == "run.finished" and batch[-1]["data"]["status"] == "cancelled"
    assert pubsub.get_message(timeout=0.5) is None  # and it came once
