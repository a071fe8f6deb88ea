"""alert and schedule triggers: deliveries, firings, alert-group incidents, schedule slots

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-02 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0005'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('hook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=120), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('token', sa.String(length=100), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('group_key', sa.String(length=1000), nullable=True),
    sa.Column('alerts', sa.Integer(), nullable=False),
    sa.Column('started', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('suppressed', sa.Integer(), nullable=False),
    sa.Column('ignored', sa.Integer(), nullable=False),
    sa.Column('result', JSON, nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_hook_deliveries_source_id', ['source', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_hook_deliveries_received_at'), ['received_at'], unique=False)

    op.create_table('trigger_firings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('rule_id', sa.String(length=200), nullable=False),
    sa.Column('fingerprint', sa.String(length=200), nullable=False),
    sa.Column('group_key', sa.String(length=1000), nullable=True),
    sa.Column('group_hash', sa.String(length=64), nullable=False),
    sa.Column('starts_at', sa.String(length=64), nullable=True),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('incident_id', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('trigger_firings', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_firings_rule_fp', ['rule_id', 'fingerprint', 'id'], unique=False)
        batch_op.create_index('ix_trigger_firings_rule_created', ['rule_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_trigger_firings_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_trigger_firings_group_hash'), ['group_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_trigger_firings_run_id'), ['run_id'], unique=False)

    op.create_table('trigger_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rule_id', sa.String(length=200), nullable=False),
    sa.Column('group_hash', sa.String(length=64), nullable=False),
    sa.Column('incident_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('trigger_groups', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_groups_rule_group', ['rule_id', 'group_hash'], unique=False)

    op.create_table('trigger_schedules',
    sa.Column('rule_id', sa.String(length=200), nullable=False),
    sa.Column('last_slot', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('rule_id')
    )


def downgrade() -> None:
    op.drop_table('trigger_schedules')
    with op.batch_alter_table('trigger_groups', schema=None) as batch_op:
        batch_op.drop_index('ix_trigger_groups_rule_group')
    op.drop_table('trigger_groups')
    with op.batch_alter_table('trigger_firings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trigger_firings_run_id'))
        batch_op.drop_index(batch_op.f('ix_trigger_firings_group_hash'))
        batch_op.drop_index(batch_op.f('ix_trigger_firings_delivery_id'))
        batch_op.drop_index('ix_trigger_firings_rule_created')
        batch_op.drop_index('ix_trigger_firings_rule_fp')
    op.drop_table('trigger_firings')
    with op.batch_alter_table('hook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hook_deliveries_received_at'))
        batch_op.drop_index('ix_hook_deliveries_source_id')
    op.drop_table('hook_deliveries')
