"""Run Alembic migrations from code: `runbookd migrate`, `runbookd up` and the tests all come here."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "heads") -> None:
    command.upgrade(alembic_config(url), revision)


def code_heads() -> frozenset[str]:
    """The revisions this code expects the database to be at."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def pending_migrations(connection: Connection, expected: frozenset[str]) -> str | None:
    """None when the database is at every head, else what is wrong (for readiness probes)."""
    try:
        applied = {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}
    except Exception:
        return "the database has no schema yet: run `runbookd migrate`"
    missing = expected - applied
    if missing:
        return f"migrations pending ({', '.join(sorted(missing))}): run `runbookd migrate`"
    return None
