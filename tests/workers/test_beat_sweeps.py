"""Timed reverts run in beat itself: with the only worker pool process held by a long run, a flag changed
"for 2s" and a log-level override "for 2s" still end at most 2 s late, audited as the system."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from server.app import create_app
from server.auth.models import Role
from server.flags.models import FlagExpiry
from server.loglevels.models import LogLevelOverride
from server.models_base import as_utc
from tests.conftest import subprocess_env
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http, serve, start, wait_for, worker_and_beat

pytestmark = pytest.mark.slow

LONG_RUN = """title: Holds a worker pool process
steps:
  - {id: slow, uses: shell, with: {argv: [sleep, "20"]}}
"""


def test_reverts_are_on_time_while_the_only_worker_slot_is_busy(settings, make_token, engine, tmp_path):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "long.yaml").write_text(LONG_RUN)
    queue = f"beat-sweeps-{uuid.uuid4().hex[:8]}"
    local = settings.model_copy(update={"runbooks_dir": runbooks, "default_queue": queue})
    env = subprocess_env(local, RUNBOOKD_DEFAULT_QUEUE=queue, RUNBOOKD_RUNBOOKS_DIR=str(runbooks))
    log_path = tmp_path / "processes.log"
    token = make_token(Role.operator)
    with serve(create_app(local)) as base_url, http(base_url, token) as api, \
            worker_and_beat(env, log_path, name="busy") as procs:
        run = start(api, "long")
        wait_for(lambda: api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "running", 30,
                 "the long run to hold the worker's only pool process")

        key = new_key("busy")
        assert api.post("/api/v1/flags", json=flag_body(key, enabled=True, default_variant="on")).status_code == 201
        killed = api.patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}},
                                                        "for": "2s", "reason": "kill switch while busy"})
        assert killed.status_code == 200, killed.text
        service = f"svc-{uuid.uuid4().hex[:8]}"
        override = api.post("/api/v1/loglevels", json={"service": service, "logger": "app", "level": "DEBUG",
                                                       "for": "2s"})
        assert override.status_code in (200, 201), override.text

        def both_ended() -> bool:
            with Session(engine) as session:
                expiry = session.exec(select(FlagExpiry).where(FlagExpiry.flag_key == key)).one()
                row = session.get(LogLevelOverride, override.json()["id"])
                return expiry.status != "pending" and row is not None and row.ended_at is not None

        wait_for(both_ended, 15, "both reverts")
        assert api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "running", "the run must still hold the slot"
        versions = api.get(f"/api/v1/flags/{key}/versions").json()
        assert versions[0]["action"] == "flag.expire" and versions[0]["actor"] == "system"
        api.post(f"/api/v1/runs/{run['id']}/cancel")

    # Beat stopped cleanly on SIGTERM, its sweep thread with it.
    assert procs[1].returncode == 0 and "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]
    with Session(engine) as session:
        expiry = session.exec(select(FlagExpiry).where(FlagExpiry.flag_key == key)).one()
        row = session.get(LogLevelOverride, override.json()["id"])
    assert expiry.status == "applied"
    flag_late = as_utc(expiry.resolved_at) - as_utc(expiry.expires_at)
    assert row is not None and row.ended_by == "system" and row.end_reason == "expire" and row.expires_at
    level_late = as_utc(row.ended_at) - as_utc(row.expires_at)
    assert timedelta(0) <= flag_late <= timedelta(seconds=2), flag_late
    assert timedelta(0) <= level_late <= timedelta(seconds=2), level_late
