"""Restarts with runs in flight, against real servers each test starts on its own ports: Redis and PostgreSQL
stopped and started again, the api SIGKILLed under load, beat SIGKILLed while reverts fall due.

Each test prints one `FIGURES <scenario> in_flight=… lost=… dup=… recover_s=…` line (`pytest -s`)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.server.restarts.harness import (
    FINISHED,
    Follower,
    PgCluster,
    figures,
    get_run,
    pg_cluster,
    private_redis,
    run_event_ids,
    stack,
    wait_all_finished,
)
from tests.support import wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster for the module; each test has a database of its own in it."""
    with pg_cluster() as running:
        yield running


def _effects(where: Path, tag: str) -> list[str]:
    path = where / tag
    return path.read_text().splitlines() if path.exists() else []


def _start_runs(client: httpx.Client, where: Path, count: int, nap: str = "1") -> list[tuple[int, str]]:
    started = []
    for _ in range(count):
        tag = uuid.uuid4().hex[:10]
        response = client.post("/api/v1/runs", json={"runbook": "effects",
                                                     "params": {"dir": str(where), "tag": tag, "nap": nap}})
        assert response.status_code == 202, response.text
        started.append((response.json()["id"], tag))
    return started


def _duplicated(where: Path, tags: list[str]) -> int:
    """Side effects beyond one per step: each run's steps append one line each to the run's own file."""
    return sum(max(0, len(_effects(where, tag)) - 2) for tag in tags)


def _make_flag(api: httpx.Client, key: str) -> None:
    made = api.post("/api/v1/flags", json={"key": key, "type": "boolean", "variants": {"on": True, "off": False},
                                          "default_variant": "off", "enabled": True, "reason": "restart test"})
    assert made.status_code == 201, made.text


def _sql(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        return list(conn.execute(query, args).fetchall())


# -- Redis ----------------------------------------------------------------------------------------------
def test_redis_restart_with_runs_followers_and_evaluations_in_flight(cluster, tmp_path):
    effects = tmp_path / "effects"
    effects.mkdir()
    with private_redis(tmp_path / "redis") as redis_server, \
            stack(tmp_path / "home", cluster.create_database(), redis_server.url) as rb:
        rb.start(api=2, worker=4)  # two api processes: a flag change made through one must reach the other's cache
        operator, client_token = rb.token("operator"), rb.token("client")
        with rb.client(operator) as api:
            key = f"restart-{uuid.uuid4().hex[:8]}"
            _make_flag(api, key)

            # Evaluations under way the whole time, each on a new connection (so both api processes serve them).
            evaluations: list[tuple[float, object]] = []
            stop_evaluating = threading.Event()

            def evaluate() -> None:
                while not stop_evaluating.is_set():
                    try:
                        response = httpx.post(f"{rb.url}/ofrep/v1/evaluate/flags/{key}", json={"context": {}},
                                              headers={"Authorization": f"Bearer {client_token}"}, timeout=5)
                        value = response.json().get("value") if response.status_code == 200 else response.status_code
                    except (httpx.HTTPError, ValueError) as exc:
                        value = type(exc).__name__
                    evaluations.append((time.monotonic(), value))
                    time.sleep(0.05)

            evaluator = threading.Thread(target=evaluate, daemon=True)
            evaluator.start()
            started = _start_runs(api, effects, 20, nap="0.5")
            ids = [run_id for run_id, _tag in started]
            followers = [Follower(rb.url, operator, run_id) for run_id in ids]
            for follower in followers:
                follower.start()
            try:
                # Some runs running, the rest queued: then Redis goes away.
                wait_for(lambda: sum(1 for _i, t in started if _effects(effects, t)) >= 4, 60,
                         "runs to be under way")
                in_flight = sum(1 for run_id in ids if (get_run(api, run_id) or {}).get("status") not in FINISHED)
                redis_server.stop()
                down_at = time.monotonic()
                wait_for(lambda: rb.readyz() == 503, 15, "/readyz to say 503 with Redis down")
                # The flag changes while Redis is down: no notice can be published.
                changed = api.patch(f"/api/v1/flags/{key}", json={"default_variant": "on", "reason": "during outage"})
                assert changed.status_code == 200, changed.text
                time.sleep(3)  # the outage itself: a few seconds down
                assert rb.readyz() == 503
                redis_server.start()
                up_at = time.monotonic()
                wait_for(lambda: rb.readyz() == 200, 30, "/readyz to say 200 again")

                # Flag caches resync: after a bound, every evaluation (either process) says the new value.
                def settled() -> bool:
                    recent = [v for t, v in evaluations if t > up_at][-10:]
                    return len(recent) == 10 and all(v is True for v in recent)

                try:
                    wait_for(settled, 20, "every api process's flag cache to show the change")
                except TimeoutError:
                    raise AssertionError([v for t, v in evaluations if t > up_at][-40:]) from None
                flag_s = time.monotonic() - up_at

                done = wait_all_finished(api, ids, 120)
                recovered_s = time.monotonic() - up_at
                for follower in followers:
                    follower.join(timeout=max(1.0, 30 - (time.monotonic() - up_at)))
            finally:
                stop_evaluating.set()
                for follower in followers:
                    follower.stop()
                evaluator.join(10)
            for name in ("api", "worker", "beat"):
                assert rb.procs[name].poll() is None, f"{name} died: " + rb.log(name).read_text()[-3000:]

        lost = [run_id for run_id in ids if run_id not in done or done[run_id]["status"] != "succeeded"]
        dup = _duplicated(effects, [tag for _i, tag in started])
        figures("restart-redis", in_flight=in_flight, lost=len(lost), dup=dup, outage_s=round(up_at - down_at, 1),
                recover_s=round(recovered_s, 1), flag_resync_s=round(flag_s, 1),
                sse_reconnects=sum(f.connections - 1 for f in followers))
        assert not lost, {run_id: (done.get(run_id) or {}).get("status") for run_id in lost}
        assert dup == 0
        for _run_id, tag in started:
            assert _effects(effects, tag) == ["first", "second"]
        # SSE followers resumed: each saw every stored event exactly once, in order, the last one run.finished.
        for follower in followers:
            stored = run_event_ids(rb.env["RUNBOOKD_DATABASE_URL"], follower.run_id)
            assert follower.finished, (follower.run_id, follower.events)
            assert follower.events == stored, (follower.run_id, follower.events, stored)
            assert follower.events[-1][1] == "run.finished"
        # Between the change and Redis's return some evaluations may have said the old value; never an error.
        assert all(v in (True, False) for _t, v in evaluations), {v for _t, v in evaluations if v not in (True, False)}


# -- PostgreSQL -------------------------------------------------------------------------------------------
def _error_shaped_503(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code != 503 or not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return False
    if response.request.url.path == "/readyz":
        return error.get("code") == "not_ready"
    return error.get("code") == "unavailable" and "Retry-After" in response.headers


def test_postgresql_restart_with_runs_in_flight(cluster, tmp_path):
    effects = tmp_path / "effects"
    effects.mkdir()
    database_url = cluster.create_database()
    with private_redis(tmp_path / "redis") as redis_server, \
            stack(tmp_path / "home", database_url, redis_server.url,
                  RUNBOOKD_AUTH_CACHE_SECONDS="1") as rb:
        rb.start(api=1, worker=4)
        operator = rb.token("operator")
        with rb.client(operator) as api:
            started = _start_runs(api, effects, 20, nap="0.5")
            ids = [run_id for run_id, _tag in started]
            # Followers of some runs: their streams break while the history cannot be read, and they come back
            # with Last-Event-ID, as an EventSource does.
            followers = [Follower(rb.url, operator, run_id) for run_id in ids[::4]]
            for follower in followers:
                follower.start()
            wait_for(lambda: sum(1 for _i, t in started if _effects(effects, t)) >= 4, 60, "runs to be under way")
            in_flight = sum(1 for run_id in ids if (get_run(api, run_id) or {}).get("status") not in FINISHED)
            cluster.stop("fast")
            down_at = time.monotonic()
            # During the outage: 503 in the error shape with a Retry-After, never a 500 or a trace.
            answers: list[httpx.Response] = []
            outage_until = time.monotonic() + 4
            while time.monotonic() < outage_until:
                for method, path, body in (("GET", f"/api/v1/runs/{ids[0]}", None), ("GET", "/api/v1/runs", None),
                                           ("POST", "/api/v1/runs", {"runbook": "effects",
                                                                     "params": {"dir": str(effects), "tag": "x"}}),
                                           ("GET", "/readyz", None)):
                    answers.append(api.request(method, path, json=body))
                time.sleep(0.2)
            cluster.start()
            up_at = time.monotonic()
            wait_for(lambda: rb.readyz() == 200, 30, "/readyz to say 200 again")
            done = wait_all_finished(api, ids, 120)
            recovered_s = time.monotonic() - up_at
            for follower in followers:
                follower.join(timeout=30)
                follower.stop()
            for name in ("api", "worker", "beat"):
                assert rb.procs[name].poll() is None, f"{name} died: " + rb.log(name).read_text()[-3000:]

        lost = [run_id for run_id in ids if run_id not in done or done[run_id]["status"] != "succeeded"]
        dup = _duplicated(effects, [tag for _i, tag in started])
        for follower in followers:  # every stored event exactly once, in order, across the reconnects
            assert follower.finished and follower.events == run_event_ids(database_url, follower.run_id), (
                follower.run_id, follower.connections, follower.events)
        bad = [(r.request.method, r.request.url.path, r.status_code, r.text[:300]) for r in answers
               if not _error_shaped_503(r)]
        figures("restart-postgresql", in_flight=in_flight, lost=len(lost), dup=dup,
                outage_s=round(up_at - down_at, 1), recover_s=round(recovered_s, 1),
                outage_answers=len(answers), outage_non_503=len(bad),
                sse_reconnects=sum(f.connections - 1 for f in followers))
        assert not bad, bad
        assert b'"unhandled error"' not in rb.log("api").read_bytes(), "the api logged a 500's trace"
        assert not lost, {run_id: (done.get(run_id) or {}).get("status") for run_id in lost}
        assert dup == 0, {tag: _effects(effects, tag) for _i, tag in started if len(_effects(effects, tag)) > 2}


# -- the api SIGKILLed under load ---------------------------------------------------------------------------
def test_api_sigkilled_under_load(cluster, tmp_path):
    effects = tmp_path / "effects"
    effects.mkdir()
    database_url = cluster.create_database()
    attempts_per_thread, threads = 30, 4
    with private_redis(tmp_path / "redis") as redis_server, stack(tmp_path / "home", database_url,
                                                                    redis_server.url) as rb:
        rb.start(api=1, worker=4)
        operator = rb.token("operator")
        accepted: dict[str, int] = {}  # tag -> run id, for every 202
        unanswered: list[str] = []  # tags of requests that got no answer (the api died under them)
        other: list[tuple[str, int]] = []
        lock = threading.Lock()
        answered = threading.Semaphore(0)

        def post_runs() -> None:
            give_up = time.monotonic() + 150
            with rb.client(operator, timeout=10) as client:
                for _ in range(attempts_per_thread):
                    tag = uuid.uuid4().hex[:10]
                    while True:
                        try:
                            response = client.post("/api/v1/runs", json={
                                "runbook": "effects", "params": {"dir": str(effects), "tag": tag, "nap": "0"}})
                        except httpx.ConnectError:  # nothing was sent: the api is restarting, try again
                            assert time.monotonic() < give_up, "the api did not come back"
                            time.sleep(0.1)
                            continue
                        except httpx.HTTPError:  # sent, and the api died before it answered
                            with lock:
                                unanswered.append(tag)
                            break
                        with lock:
                            if response.status_code == 202:
                                accepted[tag] = response.json()["id"]
                            else:
                                other.append((tag, response.status_code))
                        answered.release()
                        break

        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(post_runs) for _ in range(threads)]
            for _ in range(40):  # mid-way: after 40 of the 120 answers
                if not answered.acquire(timeout=60):
                    raise AssertionError([f.exception(timeout=0) for f in futures if f.done()])
            rb.kill("api")
            killed_at = time.monotonic()
            rb.start_api()
            back_s = time.monotonic() - killed_at
            for future in futures:
                future.result(timeout=180)

        with rb.client(operator) as api:
            done = wait_all_finished(api, list(accepted.values()), 150)
        recovered_s = time.monotonic() - killed_at
        # What the database holds for every attempt, answered or not.
        rows = _sql(database_url, "SELECT r.params->>'tag', r.id, r.status, count(s.id) FROM runs r "
                                  "LEFT JOIN step_runs s ON s.run_id = r.id GROUP BY r.id")
        by_tag = {tag: (run_id, status, steps) for tag, run_id, status, steps in rows}
        half = [(tag, by_tag[tag]) for tag in unanswered if tag in by_tag and by_tag[tag][2] != 3]
        unanswered_created = [tag for tag in unanswered if tag in by_tag]

        def settled() -> bool:
            statuses = _sql(database_url, "SELECT status FROM runs WHERE status NOT IN "
                                          "('succeeded', 'failed', 'cancelled', 'timed_out')")
            return not statuses

        try:
            wait_for(settled, 60, "every run in the database, answered or not, to finish (none stuck queued)")
        except TimeoutError:
            raise AssertionError(_sql(database_url, "SELECT id, status, dispatched_at, created_at, worker, "
                                                    "params->>'tag' FROM runs WHERE status NOT IN "
                                                    "('succeeded', 'failed', 'cancelled', 'timed_out')")) from None
        final = {tag: status for tag, _id, status, _s in _sql(
            database_url, "SELECT r.params->>'tag', r.id, r.status, 0 FROM runs r")}
        lost = [tag for tag in accepted if final.get(tag) != "succeeded"]
        dup = _duplicated(effects, list(final))
        assert len(accepted) + len(unanswered) + len(other) == threads * attempts_per_thread
        figures("api-sigkill", attempts=threads * attempts_per_thread, accepted=len(accepted),
                unanswered=len(unanswered), unanswered_committed=len(unanswered_created), lost=len(lost), dup=dup,
                api_back_s=round(back_s, 1), recover_s=round(recovered_s, 1))
        assert not other, other
        assert len(rows) == len(accepted) + len(unanswered_created), "a run no request asked for"
        assert len(done) == len(accepted)
        assert not lost, lost
        assert all(by_tag[tag][0] == run_id for tag, run_id in accepted.items())
        # Nothing half-exists: a run committed for an unanswered request has every step row and finishes
        # like any other (the relay sends it); it never sits queued or lacks its steps.
        assert not half, half
        assert all(final[tag] == "succeeded" for tag in unanswered_created), {t: final[t] for t in unanswered_created}
        assert dup == 0
        for tag in accepted:
            assert _effects(effects, tag) == ["first", "second"]


# -- beat SIGKILLed while reverts fall due -------------------------------------------------------------------------
def test_beat_sigkilled_then_restarted_applies_the_reverts_that_fell_due_once(cluster, tmp_path):
    database_url = cluster.create_database()
    with private_redis(tmp_path / "redis") as redis_server, stack(tmp_path / "home", database_url,
                                                                    redis_server.url) as rb:
        rb.start(api=1, worker=2)
        operator = rb.token("operator")
        key, service = f"beat-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"
        with rb.client(operator) as api:
            _make_flag(api, key)
            rb.kill("beat")
            killed_at = time.monotonic()
            timed = api.patch(f"/api/v1/flags/{key}", json={"default_variant": "on", "for": "1s", "reason": "timed"})
            assert timed.status_code == 200, timed.text
            level = api.post("/api/v1/loglevels", json={"service": service, "logger": "app", "level": "DEBUG",
                                                        "for": "1s"})
            assert level.status_code == 201, level.text

            def flag_versions() -> list[tuple[Any, ...]]:
                return _sql(database_url, "SELECT version, action FROM flag_versions WHERE flag_key = %s "
                                          "ORDER BY version", key)

            def expiries() -> list[tuple[Any, ...]]:
                return _sql(database_url, "SELECT action FROM audit_events WHERE action = 'loglevel.expire' "
                                          "AND target_id = %s", f"{service}/app")

            due_at = time.monotonic() + 1
            # Both fall due while beat is down, and stay unapplied for want of it (beat sweeps them itself, no
            # worker does): well past one of its once-a-second sweeps after they fell due.
            time.sleep(max(0.0, due_at + 1.5 - time.monotonic()))
            assert len(flag_versions()) == 2 and not expiries(), (flag_versions(), expiries())
            rb.start_beat()
            back_at = time.monotonic()
            wait_for(lambda: len(flag_versions()) >= 3 and expiries(), 30,
                     "the restarted beat to apply both reverts")
            applied_s = time.monotonic() - back_at
            # Exactly once: three more seconds of beat's once-a-second sweeps add nothing.
            time.sleep(3)
            versions = flag_versions()
            assert [v for v, _a in versions] == [1, 2, 3], versions
            assert len(expiries()) == 1
        figures("beat-sigkill", in_flight=2, lost=0, dup=len(versions) - 3 + len(expiries()) - 1,
                down_s=round(back_at - killed_at, 1), recover_s=round(applied_s, 1))
