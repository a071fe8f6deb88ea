"""flag off variant: every flag names the variant it serves when disabled (a kill switch)

Before this, a disabled environment served its default variant, so killing a flag whose default was "on"
changed nothing. Existing flags, and every stored version of them (so a rollback stays valid), get an
`off_variant`: a boolean flag its variant whose value is false (one named "off" is added when it has none);
any other type its flag-level default_variant, which the log line names so an operator can check it.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-02 00:40:00
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = '0006'
down_revision = '0003'  # the flags domain's branch
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def with_off_variant(spec: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The spec with an off_variant, and a note of what was chosen when it was not the obvious choice."""
    if spec.get("off_variant") is not None:
        return spec, None
    variants = dict(spec.get("variants") or {})
    if spec.get("type") == "boolean":
        falses = [name for name, value in variants.items() if value is False]
        if falses:
            return {**spec, "off_variant": falses[0]}, None
        name = "off" if "off" not in variants else next(f"off-{i}" for i in range(2, 100) if f"off-{i}" not in variants)
        return ({**spec, "variants": {**variants, name: False}, "off_variant": name},
                f"had no false variant; added {name!r}: false as its off variant")
    default = spec.get("default_variant")
    return ({**spec, "off_variant": default},
            f"is a {spec.get('type')} flag: its off variant is the flag-level default {default!r}")


def _tables() -> tuple[sa.TableClause, sa.TableClause]:
    flags = sa.table("flags", sa.column("key", sa.String), sa.column("spec", JSON))
    versions = sa.table("flag_versions", sa.column("id", sa.Integer), sa.column("flag_key", sa.String),
                        sa.column("spec", JSON))
    return flags, versions


def _no_flag_tables() -> bool:
    # The flag tables come from 0003, on a branch of its own: on a new database this may run first, with
    # nothing to migrate (a depends_on would make 0003 look unapplied to the readiness check).
    return not sa.inspect(op.get_bind()).has_table("flags")


def upgrade() -> None:
    if _no_flag_tables():
        log.info("0006 off variant: no flags yet, nothing to migrate")
        return
    bind = op.get_bind()
    flags, versions = _tables()
    notes = []
    for key, spec in bind.execute(sa.select(flags.c.key, flags.c.spec)).all():
        new, note = with_off_variant(dict(spec or {}))
        if new != spec:
            bind.execute(flags.update().where(flags.c.key == key).values(spec=new))
        if note:
            notes.append(f"flag {key!r} {note}")
    for row_id, spec in bind.execute(sa.select(versions.c.id, versions.c.spec)).all():
        new, _note = with_off_variant(dict(spec or {}))
        if new != spec:
            bind.execute(versions.update().where(versions.c.id == row_id).values(spec=new))
    for note in notes:
        log.info("0006 off variant: %s; change it with PATCH /api/v1/flags/KEY {\"off_variant\": ...}", note)
    log.info("0006 off variant: every flag now serves its off variant when disabled (%d needed a choice)",
             len(notes))


def downgrade() -> None:
    # Older code forbids unknown keys in a spec: take off_variant out again (an added "off" variant stays).
    if _no_flag_tables():
        return
    bind = op.get_bind()
    flags, versions = _tables()
    for key, spec in bind.execute(sa.select(flags.c.key, flags.c.spec)).all():
        if spec and "off_variant" in spec:
            bind.execute(flags.update().where(flags.c.key == key)
                         .values(spec={k: v for k, v in spec.items() if k != "off_variant"}))
    for row_id, spec in bind.execute(sa.select(versions.c.id, versions.c.spec)).all():
        if spec and "off_variant" in spec:
            bind.execute(versions.update().where(versions.c.id == row_id)
                         .values(spec={k: v for k, v in spec.items() if k != "off_variant"}))
