"""A cancel (or an approval) is announced the same way whoever makes it: from chat or from an alert's
resolution, as from the API, the run's new events reach its followers live and a worker running it is told at
once through Redis (server.runs.service.cancel / decide register that with server.aftercommit).

The worker here polls the database only every 30 s (its heartbeat), so a step stopped within seconds was
stopped by the Redis signal; the api re-reads stored events only every 60 s (stream.RESYNC_S), so an event
that reaches a follower within seconds came by the live publish.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
from pydantic import SecretStr
from sqlmodel import Session

from server.aftercommit import pending
from server.app import create_app
from server.auth.models import Actor, Role, Source
from server.redis_client import make_redis
from server.runs import events, service, stream, sweeps
from server.runs.models import Run
from tests.conftest import subprocess_env
from tests.server.chat.conftest import SLACK_SECRET, TEAM, Slack
from tests.server.hooks.conftest import Hooks, alert, payload, unique, write_rules
from tests.server.runs.conftest import RUNBOOKS
from tests.support import celery_worker, free_port_url, http, serve, start, steps, wait_for, wait_run
from tests.ui.test_console_http import csrf_of, signed_in

SLOW_DB_POLL_S = 30  # the worker's heartbeat, when it also reads the database's cancel flag
PROMPT_S = 5.0  # well under SLOW_DB_POLL_S and stream.RESYNC_S as set here


@pytest.fixture(scope="module")
def live_settings(runs_settings, tmp_path_factory):
    directory = tmp_path_factory.mktemp("live-runbooks")
    for name in ("slow-shell.yaml", "approval.yaml"):
        shutil.copy(RUNBOOKS / name, directory / name)
    return runs_settings.model_copy(update={
        "runbooks_dir": directory, "default_queue": f"rbtest-live-{uuid.uuid4().hex[:6]}",
        "slack_signing_secret": SecretStr(SLACK_SECRET), "chat_users": {f"slack:{TEAM}/UOPS": Role.operator},
        "chat_channel_allowlist": [f"slack:{TEAM}/CGENERAL"]})


@pytest.fixture(scope="module")
def live_api(live_settings):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "RESYNC_S", 60.0)  # followers get new events from the live publish only
        with serve(create_app(live_settings)) as url:
            yield url


@pytest.fixture(scope="module")
def slow_poll_worker(live_settings, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("live-worker") / "worker.log"
    env = subprocess_env(live_settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL=str(SLOW_DB_POLL_S),
                         RUNBOOKD_ARTIFACTS_DIR=str(live_settings.artifacts_dir))
    with celery_worker(env, log_path, name="live", concurrency=2, queues=live_settings.default_queue):
        yield log_path


@pytest.fixture(scope="module")
def op(live_api, make_token):
    with http(live_api, make_token(Role.operator)) as client:
        yield client


class Follower:
    """An SSE client of GET /api/v1/runs/{id}/events, reading in a thread: each event as it arrives."""

    def __init__(self, base_url: str, token: str, run_id: int) -> None:
        self.events: queue.Queue[dict] = queue.Queue()
        self._client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx.Timeout(10, read=120))
        self._response = self._client.send(self._client.build_request("GET", f"/api/v1/runs/{run_id}/events"),
                                           stream=True)
        assert self._response.status_code == 200
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._response.iter_lines():
                if line.startswith("data:"):
                    self.events.put(orjson.loads(line.removeprefix("data:").strip()))
        except httpx.HTTPError:
            pass

    def until(self, event_type: str, timeout: float) -> tuple[dict, list[str]]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            seen.append(event["type"])
            if event["type"] == event_type:
                return event, seen
        raise AssertionError(f"no {event_type} within {timeout}s; the stream said {seen}")

    def close(self) -> None:
        self._response.close()
        self._client.close()


@pytest.fixture
def follow(live_api, make_token) -> Iterator:
    token, followers = make_token(Role.viewer), []

    def open_(run_id: int) -> Follower:
        follower = Follower(live_api, token, run_id)
        followers.append(follower)
        return follower

    yield open_
    for follower in followers:
        follower.close()


def _running_sleeper(op) -> dict:
    run = start(op, "slow-shell", {"seconds": 120})
    wait_for(lambda: steps(op.get(f"/api/v1/runs/{run['id']}").json())["sleeper"]["status"] == "running",
             30, "the shell step to start")
    return run


def _caught_up(follower: Follower) -> None:
    """The follower has read the stored history (so what comes next is live): the sleeper's start is in it."""
    follower.until("step.started", 10)
    while True:
        try:
            event = follower.events.get(timeout=1.0)
        except queue.Empty:
            return
        if event["type"] == "step.started" and event["step_id"] == "sleeper":
            return


def test_a_cancel_from_chat_reaches_the_follower_live_and_stops_the_step(op, slow_poll_worker, live_api,
                                                                          follow):
    run = _running_sleeper(op)
    follower = follow(run["id"])
    _caught_up(follower)
    asked = time.monotonic()
    reply = Slack(live_api).command(f"cancel {run['id']}")
    assert reply.status_code == 200 and "cancel requested" in reply.text, reply.text
    event, _seen = follower.until("run.cancel_requested", PROMPT_S)
    assert event["data"]["by"].startswith("slack:")
    finished, _seen = follower.until("run.finished", PROMPT_S)
    assert finished["data"]["status"] == "cancelled"
    assert time.monotonic() - asked < PROMPT_S  # the worker heard it from Redis, not from its 30 s database poll
    done = wait_run(op, run["id"], timeout=5)
    assert done["status"] == "cancelled" and steps(done)["sleeper"]["status"] == "cancelled"


def test_an_alerts_resolution_cancels_its_run_live_and_stops_the_step(op, slow_poll_worker, live_api, live_settings,
                                                                       make_token, follow):
    rule, name = unique(), unique("Live")
    write_rules(live_settings.runbooks_dir, f"""triggers:
  - id: {rule}
    runbook: slow-shell
    match: {{labels: {{alertname: {name}}}}}
    params: {{seconds: 120}}
    on_resolved: cancel_run
""")
    hooks = Hooks(live_api, make_token(Role.hook))
    firing = alert(name, fingerprint="fp-live", starts_at="2026-12-02T03:00:00Z")
    started = hooks.alertmanager(payload([firing], group_key="live-group"))
    assert started.status_code == 200 and started.json()["started"] == 1, started.text
    [run_id] = started.json()["runs"]
    wait_for(lambda: steps(op.get(f"/api/v1/runs/{run_id}").json())["sleeper"]["status"] == "running",
             30, "the alert's run to start its shell step")
    follower = follow(run_id)
    _caught_up(follower)
    asked = time.monotonic()
    resolved = hooks.alertmanager(payload([firing | {"status": "resolved"}], group_key="live-group",
                                          status="resolved"))
    assert resolved.status_code == 200, resolved.text
    event, _seen = follower.until("run.cancel_requested", PROMPT_S)
    assert event["data"]["by"] == "hook:alertmanager"
    finished, _seen = follower.until("run.finished", PROMPT_S)
    assert finished["data"]["status"] == "cancelled"
    assert time.monotonic() - asked < PROMPT_S
    assert wait_run(op, run_id, timeout=5)["status"] == "cancelled"


def test_a_cancel_from_the_console_reaches_the_follower_live_and_stops_the_step(op, slow_poll_worker, live_api,
                                                                                make_token, follow):
    run = _running_sleeper(op)
    follower = follow(run["id"])
    _caught_up(follower)
    with signed_in(live_api, make_token(Role.operator)) as console:
        csrf = csrf_of(console, f"/ui/runs/{run['id']}")
        asked = time.monotonic()
        response = console.post(f"/ui/runs/{run['id']}/cancel", data={"csrf": csrf, "reason": "from the console"})
    assert response.status_code == 303, response.text
    follower.until("run.cancel_requested", PROMPT_S)
    finished, _seen = follower.until("run.finished", PROMPT_S)
    assert finished["data"]["status"] == "cancelled" and time.monotonic() - asked < PROMPT_S


def test_an_approval_from_chat_is_published_and_sends_the_run_on(op, slow_poll_worker, live_api, follow):
    run = start(op, "approval")
    wait_run(op, run["id"], statuses={"waiting_approval"}, timeout=30)
    follower = follow(run["id"])
    follower.until("step.waiting_approval", 10)
    reply = Slack(live_api).command(f"approve {run['id']} gated")
    assert reply.status_code == 200 and "approved" in reply.text, reply.text
    event, _seen = follower.until("step.approved", PROMPT_S)
    assert event["step_id"] == "gated"
    assert wait_run(op, run["id"], timeout=20)["status"] == "succeeded"  # it was sent on to the worker


def test_a_rolled_back_cancel_or_decision_announces_nothing(op, slow_poll_worker, live_settings, engine):
    running = _running_sleeper(op)
    waiting = start(op, "approval")
    wait_run(op, waiting["id"], statuses={"waiting_approval"}, timeout=30)
    client = make_redis(live_settings)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    ghost = Actor(name="rolled-back", role=Role.operator, source=Source.api)
    try:
        for run in (running, waiting):
            pubsub.subscribe(events.channel(live_settings, run["id"]))
            pubsub.get_message(timeout=5)
        with Session(engine, expire_on_commit=False) as session:
            service.cancel(session, run_id=running["id"], actor=ghost, reason="never happened",
                           settings=live_settings, client=client)
            service.decide(session, run_id=waiting["id"], step_id="gated", actor=ghost, approve=True,
                           reason=None, settings=live_settings, client=client)
            assert pending(session) == 4  # the cancel's publish and stop signal, the decision's publish and send
            session.rollback()
            assert pending(session) == 0
        assert client.get(events.cancel_key(live_settings, running["id"])) is None  # the worker was not told
        time.sleep(1.5)  # a cancelled step would have stopped by now, a sent run been taken
        published = []
        while (message := pubsub.get_message(timeout=0.1)) is not None:
            published.extend(m["type"] for m in orjson.loads(message["data"]) if m.get("id") is not None)
        assert published == [], published  # (live output lines carry no id; the sleeper prints none anyway)
        now = op.get(f"/api/v1/runs/{running['id']}").json()
        assert now["status"] == "running" and steps(now)["sleeper"]["status"] == "running"
        assert op.get(f"/api/v1/runs/{waiting['id']}").json()["status"] == "waiting_approval"
    finally:
        pubsub.close()
        client.close()
        for run in (running, waiting):
            op.post(f"/api/v1/runs/{run['id']}/cancel", json={"reason": "test over"})
    assert wait_run(op, running["id"], timeout=PROMPT_S)["status"] == "cancelled"  # the real cancel still works


def test_a_decision_the_broker_refuses_is_left_for_the_relay(op, slow_poll_worker, live_settings, engine):
    waiting = start(op, "approval")
    wait_run(op, waiting["id"], statuses={"waiting_approval"}, timeout=30)
    offline = live_settings.model_copy(update={"redis_url": free_port_url("redis")})
    someone = Actor(name="approver-offline", role=Role.operator, source=Source.api)
    with Session(engine, expire_on_commit=False) as session:
        service.decide(session, run_id=waiting["id"], step_id="gated", actor=someone, approve=True, reason=None,
                       settings=offline, client=None)
        session.commit()  # the send fails after the commit, which clears the run's "sent" mark
    with Session(engine) as session:
        run = session.get(Run, waiting["id"])
        assert run is not None and run.status == "queued" and run.dispatched_at is None
    assert sweeps.relay(engine, live_settings, min_age_s=0) >= 1
    assert wait_run(op, waiting["id"], timeout=20)["status"] == "succeeded"
