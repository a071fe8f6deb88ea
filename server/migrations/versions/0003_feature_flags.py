"""feature flags: live flags, immutable versions, expiries of temporary changes, environments

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 20:16:38.932768
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('flag_environments',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('flag_expiries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('flag_key', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('revert_to', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=True),
    sa.Column('incident_id', sa.String(length=64), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolution', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('flag_expiries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flag_expiries_flag_key'), ['flag_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_flag_expiries_incident_id'), ['incident_id'], unique=False)
        batch_op.create_index('ix_flag_expiries_status_due', ['status', 'expires_at'], unique=False)

    op.create_table('flag_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('flag_key', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('diff', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=True),
    sa.Column('incident_id', sa.String(length=64), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('flag_key', 'version', name='uq_flag_versions_key_version')
    )
    with op.batch_alter_table('flag_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flag_versions_flag_key'), ['flag_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_flag_versions_incident_id'), ['incident_id'], unique=False)

    op.create_table('flags',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flags_deleted'), ['deleted'], unique=False)

    # Every installation starts with these two; more can be added through the API.
    environments = sa.table('flag_environments', sa.column('name', sa.String), sa.column('description', sa.String),
                            sa.column('created_at', sa.DateTime(timezone=True)))
    now = datetime.now(UTC)
    op.bulk_insert(environments, [{"name": "production", "description": "live traffic", "created_at": now},
                                  {"name": "staging", "description": "pre-release", "created_at": now}])



def downgrade() -> None:
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flags_deleted'))

    op.drop_table('flags')
    with op.batch_alter_table('flag_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flag_versions_incident_id'))
        batch_op.drop_index(batch_op.f('ix_flag_versions_flag_key'))

    op.drop_table('flag_versions')
    with op.batch_alter_table('flag_expiries', schema=None) as batch_op:
        batch_op.drop_index('ix_flag_expiries_status_due')
        batch_op.drop_index(batch_op.f('ix_flag_expiries_incident_id'))
        batch_op.drop_index(batch_op.f('ix_flag_expiries_flag_key'))

    op.drop_table('flag_expiries')
    op.drop_table('flag_environments')
