"""Expiries of temporary changes: applied once however many processes sweep, and swept at api start-up."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import select

from server.app import create_app
from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.flags import service
from server.flags.expiry import revert_due
from server.flags.models import FlagCreate, FlagUpdate, FlagVersion
from server.settings import Settings
from tests.conftest import TEST_ACTOR
from tests.server.flags.conftest import flag_body, new_key
from tests.support import delete_prefixed_keys, http, serve


def _temporary_flag(engine, seconds: float) -> str:
    key = new_key("tmp")
    with session_scope(engine) as session:
        service.create_flag(session, body=FlagCreate.model_validate(flag_body(key, enabled=True)), actor=TEST_ACTOR)
        service.update_flag(session, key=key, actor=TEST_ACTOR,
                            changes=FlagUpdate.model_validate({"default_variant": "on", "for": seconds}))
    return key


def service_token(session):
    return auth.create_token(session, name=f"op-{uuid.uuid4().hex[:6]}", role=Role.operator, actor=TEST_ACTOR)


def test_concurrent_sweeps_apply_each_expiry_once(settings, engine):
    keys = [_temporary_flag(engine, 0.2) for _ in range(5)]
    time.sleep(0.4)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: revert_due(engine, settings, None), range(4)))
    applied = sorted(k for result in results for k, _ in result)
    mine = [k for k in applied if k in keys]
    assert sorted(mine) == sorted(keys)
    with session_scope(engine) as session:
        for key in keys:
            versions = session.exec(select(FlagVersion).where(FlagVersion.flag_key == key)).all()
            assert [v.action for v in sorted(versions, key=lambda v: v.version)] == [
                "flag.create", "flag.update", "flag.expire"]


def test_api_start_up_applies_expiries_missed_while_nothing_ran(fresh_database_url, redis_url, tmp_path):
    prefix = f"rbdtest-{uuid.uuid4().hex[:10]}:"
    settings = Settings(home=tmp_path, database_url=fresh_database_url, redis_url=redis_url, redis_prefix=prefix)
    engine = make_engine(fresh_database_url)
    try:
        key = _temporary_flag(engine, 0.2)
        time.sleep(0.5)  # expired, and no beat, worker or api is running
        with session_scope(engine) as session:
            assert service.get_flag(session, key=key).version == 2
            _t, token = service_token(session)
        with serve(create_app(settings)) as url, http(url, token) as client:
            flag = client.get(f"/api/v1/flags/{key}").json()
            assert flag["version"] == 3 and flag["spec"]["default_variant"] == "off"
            latest = client.get(f"/api/v1/flags/{key}/versions").json()[0]
            assert latest["actor"] == "system" and latest["action"] == "flag.expire"
            evaluated = client.post(f"/ofrep/v1/evaluate/flags/{key}", json={}).json()
            assert evaluated["value"] is False
    finally:
        engine.dispose()
        delete_prefixed_keys(redis_url, prefix)


def test_expires_at_in_the_past_is_refused(api, make_flag):
    key = make_flag()["key"]
    response = api.patch(f"/api/v1/flags/{key}", json={"description": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert response.status_code == 422 and "in the past" in response.json()["error"]["message"]
