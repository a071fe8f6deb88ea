"""incidents and chat followups

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-25 20:20:10.892711
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chat_followups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=20), nullable=False),
    sa.Column('response_url', sa.String(length=2000), nullable=False),
    sa.Column('channel', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('approvals_posted', sa.String(length=2000), nullable=False),
    sa.Column('finished_posted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('chat_followups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_followups_finished_posted_at'), ['finished_posted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_followups_run_id'), ['run_id'], unique=False)

    op.create_table('incidents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('commander', sa.String(length=200), nullable=True),
    sa.Column('summary', sa.String(length=10000), nullable=True),
    sa.Column('channel', sa.String(length=200), nullable=True),
    sa.Column('opened_by', sa.String(length=200), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('mitigated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_incidents_channel'), ['channel'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_opened_at'), ['opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incidents_status'))
        batch_op.drop_index(batch_op.f('ix_incidents_opened_at'))
        batch_op.drop_index(batch_op.f('ix_incidents_channel'))

    op.drop_table('incidents')
    with op.batch_alter_table('chat_followups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_followups_run_id'))
        batch_op.drop_index(batch_op.f('ix_chat_followups_finished_posted_at'))

    op.drop_table('chat_followups')
