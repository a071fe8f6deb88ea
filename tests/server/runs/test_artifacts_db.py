"""Artifacts live in the database (issue 15, "artifacts that outlive their node"): a real worker process with a
home of its own stores them; the api serves them after that home is gone; a run's cap and the retention sweep
hold; secret values are masked in text artifacts as in outputs. Both databases."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from server.app import create_app
from server.auth.models import Role
from server.db import session_scope
from server.dispatch_queue import ARTIFACT_RETENTION_TASK, sender
from server.models_base import utcnow
from server.runs import artifact_store, artifacts
from server.runs.artifact_models import RunArtifact, RunArtifactChunk
from server.settings import Settings
from server.stack import die_with_parent
from tests.conftest import subprocess_env
from tests.support import celery_worker, http, serve, start, steps, wait_for, wait_run

BIG = "".join(chr(97 + i % 26) for i in range(600_000)).encode()  # three chunks of 256 KiB
RUNBOOKS = {
    "outlive": """
title: A large output and a picture, from a worker whose home is then deleted
params:
  pid: {type: integer}
steps:
  - id: big
    uses: shell
    with:
      argv: [python3, -c, "import sys; sys.stdout.write(''.join(chr(97 + i % 26) for i in range(600000)))"]
  - id: rss
    uses: memory.growth
    with: {pid: "{{ params.pid }}", window: 1s, interval: 200ms}
""",
    "overcap": """
title: The second large output, and a toolkit file, pass the run's artifact cap
params:
  log: {type: string}
steps:
  - id: first
    uses: shell
    with: {argv: [python3, -c, "print('a' * 700000)"]}
  - id: second
    uses: shell
    with: {argv: [python3, -c, "print('b' * 700000)"]}
  - id: search
    uses: logs.search
    with: {paths: ["{{ params.log }}"], text: login, limit: 1}
""",
    "masked": """
title: A secret param in a large output and in a toolkit file
params:
  token: {type: string, secret: true}
  log: {type: string}
steps:
  - id: loud
    uses: shell
    with: {argv: [python3, -c, "import sys; print((sys.argv[1] + ' ') * 20000)", "{{ params.token }}"]}
  - id: search
    uses: logs.search
    with: {paths: ["{{ params.log }}"], text: login, limit: 1}
""",
    "tiny": """
title: Nothing but a log line
steps:
  - {id: hello, uses: log, with: {message: hi}}
""",
}
CAP = 1_000_000  # the capped worker's RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES


@pytest.fixture(scope="module")
def artifact_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    runbooks = tmp_path_factory.mktemp("artifact-runbooks")
    for name, text in RUNBOOKS.items():
        (runbooks / f"{name}.yaml").write_text(text.lstrip())
    return settings.model_copy(update={"runbooks_dir": runbooks, "run_heartbeat_interval": 0.5,
                                       "default_queue": f"rbtest-artifacts-{uuid.uuid4().hex[:6]}",
                                       "home": tmp_path_factory.mktemp("api-home"), "artifacts_dir": None})


@contextmanager
def worker(settings: Settings, home: Path, **env: str) -> Iterator[Path]:
    """A real worker process on the settings' queue with a RUNBOOKD_HOME of its own (its scratch under it)."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / f"{home.name}-worker.log"
    environment = subprocess_env(settings, RUNBOOKD_HOME=str(home), RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5", **env)
    environment.pop("RUNBOOKD_ARTIFACTS_DIR", None)
    with celery_worker(environment, log_path, name="art", queues=settings.default_queue, timeout=90):
        yield log_path


@pytest.fixture(scope="module")
def artifact_api(artifact_settings: Settings) -> Iterator[str]:
    with serve(create_app(artifact_settings)) as url:
        yield url


@pytest.fixture(scope="module")
def capped_worker(artifact_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with worker(artifact_settings, tmp_path_factory.mktemp("capped") / "home",
                RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES=str(CAP)) as log:
        yield log


@pytest.fixture(scope="module")
def operator(artifact_api, make_token):
    with http(artifact_api, make_token(Role.operator)) as client:
        yield client


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], preexec_fn=die_with_parent)
    yield proc
    proc.kill()
    proc.wait()


CHUNKS, ARTIFACTS = RunArtifactChunk.__table__, RunArtifact.__table__


def chunk_count(engine, run_id: int, name: str) -> int:
    with engine.connect() as conn:
        joined = CHUNKS.join(ARTIFACTS, ARTIFACTS.c.id == CHUNKS.c.artifact_id)
        return conn.execute(select(func.count()).select_from(joined)
                            .where(ARTIFACTS.c.run_id == run_id, ARTIFACTS.c.name == name)).scalar_one()


def test_the_api_serves_artifacts_after_their_workers_home_is_deleted(artifact_settings, make_token, engine,
                                                                      sleeper, tmp_path):
    # A queue of its own: the module's capped worker must not take this run.
    own = artifact_settings.model_copy(update={"default_queue": f"rbtest-node-{uuid.uuid4().hex[:6]}"})
    with serve(create_app(own)) as url, http(url, make_token(Role.operator)) as operator:
        _outlive(own, operator, make_token, engine, sleeper, tmp_path / "node" / "home")


def _outlive(settings, operator, make_token, engine, sleeper, home: Path) -> None:
    with worker(settings, home):
        run = start(operator, "outlive", {"pid": sleeper.pid})
        done = wait_run(operator, run["id"], timeout=120)
        assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
        scratch = home / "artifacts" / f"run-{run['id']}"
        # The worker removes it just after it records the end, which the API may show first.
        wait_for(lambda: not scratch.exists(), 15, "the run's scratch to go when the run ends (what it kept is "
                 "in the database)")
    shutil.rmtree(home)  # the node is gone: its worker stopped, its disk wiped

    run_id = run["id"]
    big = steps(done)["big"]["outputs"]
    assert big["artifacts"]["stdout"] == {"artifact": "big.1.stdout.txt", "size": len(BIG), "head_chars": 4096}
    plot = steps(done)["rss"]["outputs"]["files"]["plot"]["artifact"]
    assert plot == "rss.1.rss.svg"
    listed = {a["name"]: a for a in operator.get(f"/api/v1/runs/{run_id}/artifacts").json()}
    assert set(listed) == {"big.1.stdout.txt", plot}
    assert listed["big.1.stdout.txt"]["size"] == len(BIG) and listed["big.1.stdout.txt"]["step_id"] == "big"
    assert listed["big.1.stdout.txt"]["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert {a["name"] for a in done["artifacts"]} == set(listed)
    assert chunk_count(engine, run_id, "big.1.stdout.txt") == 3, "stored in 256 KiB chunks"

    # Through the API with a token: the bytes, their type, the no-script CSP, an ETag from the SHA-256.
    got = operator.get(f"/api/v1/runs/{run_id}/artifacts/big.1.stdout.txt")
    assert got.status_code == 200 and got.content == BIG
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert got.headers["etag"] == f'"{hashlib.sha256(BIG).hexdigest()}"'
    assert got.headers["content-length"] == str(len(BIG))
    again = operator.get(f"/api/v1/runs/{run_id}/artifacts/big.1.stdout.txt",
                         headers={"If-None-Match": got.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    picture = operator.get(f"/api/v1/runs/{run_id}/artifacts/{plot}")
    assert picture.status_code == 200 and picture.content.startswith(b"<svg")
    assert picture.headers["content-type"] == "image/svg+xml"
    assert picture.headers["content-security-policy"] == artifacts.CSP
    assert hashlib.sha256(picture.content).hexdigest() == listed[plot]["sha256"]

    # Through signed links, without a token: the same bytes.
    with http(str(operator.base_url)) as anonymous:
        for name, expected in (("big.1.stdout.txt", BIG), (plot, picture.content)):
            one = operator.post(f"/api/v1/runs/{run_id}/artifacts/link", json={"name": name}).json()
            opened = anonymous.get(one["url"])
            assert opened.status_code == 200 and opened.content == expected
        whole = operator.post(f"/api/v1/runs/{run_id}/artifacts/link", json={}).json()
        index = anonymous.get(whole["url"])
        assert index.status_code == 200 and "big.1.stdout.txt" in index.text and plot in index.text
        assert anonymous.get(f"{whole['url']}/big.1.stdout.txt").content == BIG
        assert anonymous.get(f"{whole['url']}/{plot}").headers["content-type"] == "image/svg+xml"
        assert anonymous.get(f"/api/v1/runs/{run_id}/artifacts/{plot}").status_code == 401
    # Roles are as before: a viewer reads, a client token does not.
    with http(str(operator.base_url), make_token(Role.viewer)) as viewer:
        assert viewer.get(f"/api/v1/runs/{run_id}/artifacts/big.1.stdout.txt").content == BIG
    with http(str(operator.base_url), make_token(Role.client)) as client:
        assert client.get(f"/api/v1/runs/{run_id}/artifacts/big.1.stdout.txt").status_code == 403
    assert operator.get(f"/api/v1/runs/{run_id}/artifacts/nope.txt").status_code == 404


def test_an_artifact_over_the_runs_cap_is_refused_whole_and_the_step_says_so(operator, capped_worker, engine,
                                                                            tmp_path):
    log = tmp_path / "app.log"
    log.write_text("".join(json.dumps({"level": "info", "msg": f"login {i} " + "x" * 1000}) + "\n"
                           for i in range(500)))  # ~500 KB of matches: more than the 300 KB left
    done = wait_run(operator, start(operator, "overcap", {"log": str(log)})["id"], timeout=120)
    assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
    first, second = steps(done)["first"]["outputs"], steps(done)["second"]["outputs"]
    assert "stored" not in first["artifacts"]["stdout"]
    refused = second["artifacts"]["stdout"]
    assert refused["stored"] is False and refused["artifact"] == "second.1.stdout.txt"
    assert "RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES" in refused["error"] and "not stored" in refused["error"]
    assert second["artifacts_not_stored"] == {"second.1.stdout.txt": refused["error"]}
    assert "artifacts_not_stored" not in first
    search = steps(done)["search"]["outputs"]  # a file the step wrote: its reference says so too
    assert search["files"]["matches"]["stored"] is False and search["matched"] == 500
    assert "RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES" in search["artifacts_not_stored"]["search.1.matches.jsonl"]
    assert len(second["stdout"]) == 4096, "the head is kept in the step's row all the same"
    run_id = done["id"]
    assert [a["name"] for a in operator.get(f"/api/v1/runs/{run_id}/artifacts").json()] == ["first.1.stdout.txt"]
    assert operator.get(f"/api/v1/runs/{run_id}/artifacts/second.1.stdout.txt").status_code == 404
    assert operator.get(f"/api/v1/runs/{run_id}/artifacts/first.1.stdout.txt").content == b"a" * 700000 + b"\n"
    with session_scope(engine) as session:  # nothing of the refused one was written
        assert artifact_store.find(session, run_id, "second.1.stdout.txt") is None
        assert artifact_store.run_bytes(session, run_id) == 700001 <= CAP
    assert chunk_count(engine, run_id, "first.1.stdout.txt") == 3


def test_secret_values_are_masked_in_text_artifacts(operator, capped_worker, tmp_path):
    secret = f"tok-{uuid.uuid4().hex}"
    log = tmp_path / "app.log"
    log.write_text("".join(json.dumps({"ts": utcnow().isoformat(), "level": "info",
                                       "msg": f"login {i} with {secret}"}) + "\n" for i in range(40)))
    done = wait_run(operator, start(operator, "masked", {"token": secret, "log": str(log)})["id"], timeout=120)
    assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
    names = {a["name"] for a in done["artifacts"]}
    assert names == {"loud.1.stdout.txt", "search.1.matches.jsonl"}
    for name in names:
        body = operator.get(f"/api/v1/runs/{done['id']}/artifacts/{name}").text
        assert "***" in body and secret not in body, name
    assert secret not in json.dumps(done)


def test_the_retention_sweep_deletes_expired_artifacts_in_bounded_batches(operator, capped_worker, engine,
                                                                          artifact_settings):
    run_id = wait_run(operator, start(operator, "tiny")["id"], timeout=60)["id"]
    old = artifact_store.store_all(engine, run_id=run_id, max_run_bytes=10**9, items=[
        (f"old-{i}.txt", None, "text/plain", bytes([65 + i]) * 300_000) for i in range(5)])
    young = artifact_store.store_all(engine, run_id=run_id, max_run_bytes=10**9,
                                     items=[("young.txt", None, "text/plain", b"y" * 10)])[0]
    with engine.begin() as conn:
        conn.execute(update(ARTIFACTS).where(ARTIFACTS.c.id.in_([a.id for a in old]))
                     .values(created_at=utcnow() - timedelta(days=40)))

    def left() -> set[str]:
        with session_scope(engine) as session:
            return {a.name for a in artifact_store.of_run(session, run_id)}

    # Two batches of two: four of the five expired ones now, oldest first; their chunks with them.
    assert artifact_store.sweep_expired(engine, older_than=timedelta(days=30), batch=2, max_batches=2) == 4
    assert left() == {"old-4.txt", "young.txt"}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CHUNKS)
                            .where(CHUNKS.c.artifact_id.in_([a.id for a in old[:4]]))).scalar_one() == 0
    # The rest by beat's task, on a real worker (RUNBOOKD_ARTIFACTS_RETENTION defaults to 30 days).
    sender(artifact_settings).send_task(ARTIFACT_RETENTION_TASK, queue=artifact_settings.default_queue)
    wait_for(lambda: left() == {"young.txt"}, 60, "the retention task to delete the last expired artifact")
    with session_scope(engine) as session:
        assert artifact_store.read_all(session, young.id) == b"y" * 10


def test_an_artifact_is_written_whole_or_not_at_all_and_a_rewrite_replaces_it(operator, engine, tmp_path):
    run_id = start(operator, "tiny")["id"]  # a run row to hang artifacts on; no worker needs to run it
    first = artifact_store.store_all(engine, run_id=run_id, max_run_bytes=10**6,
                                     items=[("x.txt", "s", "text/plain", b"1" * 300_000)])[0]
    again = artifact_store.store_all(engine, run_id=run_id, max_run_bytes=10**6,
                                     items=[("x.txt", "s", "text/plain", b"2" * 5)])[0]
    with engine.connect() as conn:
        assert [a.name for a in artifact_store.of_run(conn, run_id)] == ["x.txt"]
        assert artifact_store.read_all(conn, again.id) == b"22222" and again.sha256 != first.sha256
    assert b"".join(artifact_store.chunks(engine, first)) == b"", "a reader of the old one stops, mixes nothing"
    assert b"".join(artifact_store.chunks(engine, again)) == b"22222"
    # A file that grows past the cap while it is read (a tool still writing): chunks already inserted are
    # rolled back with the row; the run keeps what it had.
    growing = tmp_path / "growing.bin"
    growing.write_bytes(b"g" * 3 * 1024 * 1024)
    with pytest.raises(artifact_store.OverCap), engine.begin() as conn:
        artifact_store.store(conn, run_id=run_id, name="growing.bin", step_id="s", content_type="x", source=growing,
                             size=10, max_run_bytes=2 * 1024 * 1024)
    with engine.connect() as conn:
        assert [a.name for a in artifact_store.of_run(conn, run_id)] == ["x.txt"]
        assert conn.execute(select(func.count()).select_from(CHUNKS).join(ARTIFACTS).where(
            ARTIFACTS.c.run_id == run_id)).scalar_one() == 1
