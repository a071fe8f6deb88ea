"""log level overrides (issue 4): other services' loggers and runbookd's own

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-25 20:14:54.856432
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('loglevel_overrides',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service', sa.String(length=100), nullable=False),
    sa.Column('logger', sa.String(length=200), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=True),
    sa.Column('incident_id', sa.String(length=64), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_by', sa.String(length=200), nullable=True),
    sa.Column('end_reason', sa.String(length=2000), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('loglevel_overrides', schema=None) as batch_op:
        batch_op.create_index('ix_loglevel_active', ['service', 'ended_at', 'id'], unique=False)
        batch_op.create_index('ix_loglevel_expiry', ['ended_at', 'expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_loglevel_overrides_incident_id'), ['incident_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('loglevel_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loglevel_overrides_incident_id'))
        batch_op.drop_index('ix_loglevel_expiry')
        batch_op.drop_index('ix_loglevel_active')

    op.drop_table('loglevel_overrides')
