"""A partition, not a death (issue 15): a worker cut off mid-step is still running, and when its link comes back it
must not go on with a run that was resumed elsewhere. Fencing by epoch (workers/claims.py, workers/journal.py)
makes every write it then tries match nothing.

A real network boundary: the worker runs in a network namespace of its own, joined to the host by a veth pair,
and reaches a private redis-server and a private PostgreSQL that this test starts, bound to the host side of
the veth (and to loopback, for the host's own worker, the reaper and the checks). The link is cut on the host
side mid-step, beat's reaper re-queues the run, a worker on the host resumes it, and the link comes back.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlmodel import select

from server.auth.models import Actor, Role, Source
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.runbooks.validation import check_text
from server.runs import sweeps
from server.runs.models import Run, RunEvent, StepRun
from server.runs.service import create_run
from server.settings import Settings
from tests.conftest import subprocess_env
from tests.server.restarts.harness import pg_cluster, private_redis
from tests.support import allowed_skip, processes, wait_for, worker_outcomes

RUNBOOK = """title: Partition
params:
  marker: {type: string}
steps:
  - id: first
    uses: shell
    with: {argv: [sh, -c, 'echo first >> "$1"', sh, "{{ params.marker }}"]}
  - id: slow
    uses: shell
    with: {argv: [sh, -c, 'echo slow-start >> "$1"; sleep "$(cat "$1.sleep")"; echo slow-end >> "$1"', sh,
                  "{{ params.marker }}"]}
  - id: last
    uses: shell
    with: {argv: [sh, -c, 'echo last >> "$1"', sh, "{{ params.marker }}"]}
"""
ACTOR = Actor(name="partition", role=Role.operator, source=Source.system)


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


@dataclass
class Link:
    netns: str
    host_dev: str
    host_ip: str
    ns_ip: str

    def cut(self) -> None:
        _run(["ip", "link", "set", self.host_dev, "down"])

    def restore(self) -> None:
        _run(["ip", "link", "set", self.host_dev, "up"])


@contextlib.contextmanager
def veth_namespace() -> Iterator[Link]:
    """A network namespace joined to the host by a veth pair on a private /30; skips where none can be made."""
    if os.geteuid() != 0:
        allowed_skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command: apt-get install -y iproute2 (tests/debian-packages.txt)")
    tag = uuid.uuid4().hex[:6]
    subnet = random.randrange(0, 63) * 4  # 10.231.N.(subnet+1/+2)/30
    link = Link(f"rbdpart-{tag}", f"rbh{tag}", f"10.231.{random.randrange(1, 255)}.{subnet + 1}", "")
    link.ns_ip = link.host_ip.rsplit(".", 1)[0] + f".{subnet + 2}"
    made = _run(["ip", "netns", "add", link.netns], check=False)
    if made.returncode != 0:
        allowed_skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        peer = f"rbn{tag}"
        for argv in (["ip", "link", "add", link.host_dev, "type", "veth", "peer", "name", peer],
                     ["ip", "link", "set", peer, "netns", link.netns],
                     ["ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_dev],
                     ["ip", "link", "set", link.host_dev, "up"],
                     ["ip", "netns", "exec", link.netns, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", peer],
                     ["ip", "netns", "exec", link.netns, "ip", "link", "set", peer, "up"],
                     ["ip", "netns", "exec", link.netns, "ip", "link", "set", "lo", "up"]):
            done = _run(argv, check=False)
            if done.returncode != 0:
                allowed_skip(f"cannot set up the veth pair here ({' '.join(argv)}): {done.stderr.strip()}")
        yield link
    finally:
        _run(["ip", "link", "del", link.host_dev], check=False)
        _run(["ip", "netns", "del", link.netns], check=False)


def _worker_argv(queue: str, name: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "worker", "--concurrency", "1", "--queues", queue,
            "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"]


def _ready(log: Path, proc: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: b" ready." in log.read_bytes() or proc.poll() is not None, 120, f"worker to start: {log}")
    assert proc.poll() is None, log.read_text()


def _events(engine: Engine, run_id: int) -> list[tuple[str, str | None, dict | None]]:
    with session_scope(engine) as session:
        rows = session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
        return [(e.type, e.step_id, e.data) for e in rows]


def _run_row(engine: Engine, run_id: int) -> Run:
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        return run


def test_a_worker_cut_off_mid_step_commits_nothing_once_its_run_resumed_elsewhere(tmp_path):
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(veth_namespace())
        listen = ("127.0.0.1", link.host_ip)
        cluster = stack.enter_context(pg_cluster(listen, trust=(f"{link.host_ip}/32", "10.231.0.0/16")))
        redis_port = stack.enter_context(private_redis(tmp_path / "redis", listen, appendonly=False)).port
        pg_port = cluster.port
        with psycopg.connect(cluster.url_admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE runbookd")
        host_db = f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/runbookd"
        upgrade(host_db)
        queue = f"rbtest-partition-{uuid.uuid4().hex[:6]}"
        host = Settings(home=tmp_path / "home", database_url=host_db, redis_url=f"redis://127.0.0.1:{redis_port}/0",
                        redis_prefix="rbdpart:", log_format="json", default_queue=queue, run_reap_grace=3.0,
                        run_heartbeat_interval=0.5, artifacts_dir=tmp_path / "artifacts")
        # The namespaced worker reaches the same servers through the veth; its heartbeats are rare, so that
        # its first statement after the cut is the save of the step it finishes while cut off.
        ns = host.model_copy(update={
            "database_url": f"postgresql+psycopg://postgres@{link.host_ip}:{pg_port}/runbookd",
            "redis_url": f"redis://{link.host_ip}:{redis_port}/0"})
        engine = make_engine(host_db)
        stack.callback(engine.dispose)
        launch = stack.enter_context(processes())
        marker = tmp_path / "effects"
        Path(f"{marker}.sleep").write_text("12")

        cut_log = tmp_path / "cut-off-worker.log"
        with cut_log.open("wb") as log:
            cut_off = launch(["ip", "netns", "exec", link.netns, *_worker_argv(queue, "cut-off")],
                             env=subprocess_env(ns, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="60",
                                                RUNBOOKD_ARTIFACTS_DIR=str(ns.artifacts_dir)),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(lambda: cut_off.poll() is None and os.killpg(cut_off.pid, signal.SIGKILL))
        _ready(cut_log, cut_off)

        checked = check_text(RUNBOOK, "partition.yaml")
        assert checked.runbook is not None, checked.errors
        with session_scope(engine) as session:
            run, _ = create_run(session, checked=checked, given={"marker": str(marker)}, actor=ACTOR, settings=host)
            run_id = run.id
        assert run_id is not None and sweeps.dispatch(engine, host, run_id, queue)

        def slow_running() -> bool:
            with session_scope(engine) as session:
                row = session.exec(select(StepRun).where(StepRun.run_id == run_id, StepRun.step_id == "slow")).one()
                return row.status == "running"

        wait_for(slow_running, 60, "the cut-off worker to be mid-step")
        first_worker = _run_row(engine, run_id).worker
        before_cut = _events(engine, run_id)

        link.cut()
        stack.callback(link.restore)  # whatever happens below, the namespace's worker can be stopped
        Path(f"{marker}.sleep").write_text("1")  # the resumed attempt's sleep is short
        host_log = tmp_path / "host-worker.log"
        with host_log.open("wb") as log:
            resumer = launch(_worker_argv(queue, "host"),
                             env=subprocess_env(host, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
                                                RUNBOOKD_ARTIFACTS_DIR=str(host.artifacts_dir)),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _ready(host_log, resumer)

        def resumed() -> bool:
            sweeps.reap(engine, host)
            return _run_row(engine, run_id).resumes >= 1

        wait_for(resumed, 60, "the reaper to re-queue the cut-off worker's run", interval=0.5)
        wait_for(lambda: _run_row(engine, run_id).status == "succeeded", 90, "the host worker to finish the run")
        # The cut-off worker's sleep has ended by now: it finished the step while cut off, and its save waits.
        wait_for(lambda: marker.read_text().count("slow-end") == 2, 60, "the cut-off worker's step to end")
        link.restore()
        wait_for(lambda: worker_outcomes(cut_log, run_id), 240, f"the cut-off worker to let the run go: {cut_log}")

        done = _run_row(engine, run_id)
        assert done.status == "succeeded" and done.error is None, done
        assert done.worker != first_worker and done.epoch == 3 and done.resumes == 1
        assert done.lost_workers == [first_worker]
        after = _events(engine, run_id)[len(before_cut):]
        # Every step's recorded effect once, the run's end once: nothing of the cut-off worker after the cut.
        assert [(kind, step) for kind, step, _ in after] == [
            ("run.worker_lost", None), ("run.resumed", None), ("step.started", "slow"), ("step.finished", "slow"),
            ("step.started", "last"), ("step.finished", "last"), ("run.finished", None)], after
        everything = _events(engine, run_id)
        assert sum(kind == "run.finished" for kind, _, _ in everything) == 1
        assert [s for kind, s, _ in everything if kind == "step.finished"] == ["first", "slow", "last"]
        with session_scope(engine) as session:
            rows = {s.step_id: s for s in session.exec(select(StepRun).where(StepRun.run_id == run_id))}
            assert {k: (r.status, r.attempts) for k, r in rows.items()} == {
                "first": ("succeeded", 1), "slow": ("succeeded", 2), "last": ("succeeded", 1)}
        # Outside the run: the first and last steps acted once. The slow step ran on both workers (the cut-off
        # one could not be told mid-step), which is what resuming an interrupted step means.
        assert Counter(marker.read_text().splitlines()) == {"first": 1, "slow-start": 2, "slow-end": 2, "last": 1}
        assert "run lost" in cut_log.read_text()
