"""runs.traceparent: the W3C trace context of the request that created a run (issue 18)

Revision ID: 0011
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0002'  # the runs domain's branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('traceparent')
