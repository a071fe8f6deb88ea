"""runs.epoch, runs.resumes, runs.lost_workers: claim generations (fencing) and resumes after a lost worker
(issue 15)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'  # the runs domain's branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column('epoch', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('resumes', sa.Integer(), nullable=False, server_default='0'))
        json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
        batch_op.add_column(sa.Column('lost_workers', json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('lost_workers')
        batch_op.drop_column('resumes')
        batch_op.drop_column('epoch')
