"""Migration 0006 gives every existing flag (and every stored version) the variant it serves when killed."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import text

from server.db import make_engine
from server.flags.evaluation import compile_flag, evaluate
from server.flags.models import FlagSpec
from server.migrate import upgrade
from tests import support

OLD = {  # specs as stored before 0006: a disabled environment served its default variant
    "bool-on": {"type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "on"},
    "bool-no-false": {"type": "boolean", "variants": {"on": True}, "default_variant": "on"},
    "pricing": {"type": "string", "variants": {"new": "v2", "old": "v1"}, "default_variant": "old"},
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url_at_0005(request, tmp_path):
    if request.param == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'old.sqlite3'}", None
    else:
        request.getfixturevalue("postgres_available")
        drop, url = support.create_pg_database()
    for revision in ("0002", "0003", "0004", "0005"):
        upgrade(url, revision)
    yield url
    if drop:
        support.drop_pg_database(drop)


def test_existing_flags_get_their_off_variant(url_at_0005, caplog):
    engine = make_engine(url_at_0005)
    with engine.begin() as conn:
        for key, old in OLD.items():
            spec = json.dumps({"key": key, "description": "", "tags": [], "owner": None, "temporary": False,
                               "remove_after": None, "deleted": False,
                               "environments": {"production": {"enabled": False, "default_variant": None,
                                                               "rules": []}}, **old})
            conn.execute(text("INSERT INTO flags (key, version, spec, deleted, created_at, updated_at) "
                              "VALUES (:k, 1, :s, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                         {"k": key, "s": spec})
            conn.execute(text("INSERT INTO flag_versions (flag_key, version, action, spec, actor, created_at) "
                              "VALUES (:k, 1, 'flag.create', :s, 'test', CURRENT_TIMESTAMP)"), {"k": key, "s": spec})
    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        upgrade(url_at_0005)
    with engine.connect() as conn:
        rows = {k: (json.loads(s) if isinstance(s, str) else s)
                for k, s in conn.execute(text("SELECT key, spec FROM flags"))}
        versions = {k: (json.loads(s) if isinstance(s, str) else s)
                    for k, s in conn.execute(text("SELECT flag_key, spec FROM flag_versions"))}
    engine.dispose()

    assert rows["bool-on"]["off_variant"] == "off"
    assert rows["bool-no-false"]["off_variant"] == "off" and rows["bool-no-false"]["variants"]["off"] is False
    assert rows["pricing"]["off_variant"] == "old"
    assert versions == rows  # a rollback to a version written before 0006 stays valid
    for key, spec in rows.items():
        flag = compile_flag(FlagSpec.model_validate(spec), 1)
        variant, reason = evaluate(flag, "production", {})
        assert (reason, flag.variants[variant]) == ("DISABLED", False if key.startswith("bool") else "v1")
    said = caplog.text
    assert "flag 'pricing' is a string flag: its off variant is the flag-level default 'old'" in said
    assert "flag 'bool-no-false' had no false variant; added 'off': false" in said
    assert "bool-on" not in said
