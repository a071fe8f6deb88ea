"""A real worker process consumes a real task through the broker, and the request id reaches its log."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from server.context import request_id_var
from server.dispatch_queue import PING_TASK, send
from tests.conftest import subprocess_env
from tests.support import wait_for

# A queue only this module's worker consumes: workers other modules keep running share the default one.
QUEUE = f"celery-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(settings, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker", "--concurrency", "1", "--queues", QUEUE,
             "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h"],
            env=subprocess_env(settings), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: b" ready." in log_path.read_bytes() or proc.poll() is not None, 60, "worker to start")
            assert proc.poll() is None, log_path.read_text()
            yield log_path
        finally:
            proc.terminate()
            proc.wait(30)


def test_task_is_consumed_and_carries_the_request_id(worker, settings):
    request_id = f"req-{uuid.uuid4().hex}"
    token = request_id_var.set(request_id)
    try:
        send(PING_TASK, {"hello": "worker"}, settings=settings, queue=QUEUE)
    finally:
        request_id_var.reset(token)

    def logged() -> bool:
        return any('"ping received"' in line and f'"request_id": "{request_id}"' in line
                   for line in worker.read_text().splitlines())

    wait_for(logged, 30, "the worker to log the ping with the request id")


def test_broker_keys_stay_inside_the_test_prefix(settings, redis_url):
    import redis

    queue = f"nobody-listens-{uuid.uuid4().hex[:8]}"
    send(PING_TASK, "parked", settings=settings, queue=queue)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{settings.redis_prefix}{queue}") == 1
        assert not client.exists(queue), "the broker queue must live under RUNBOOKD_REDIS_PREFIX"
    finally:
        client.close()
