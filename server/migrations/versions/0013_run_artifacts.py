"""run_artifacts and run_artifact_chunks: a run's artifacts in the database, chunked (issue 15)

Revision ID: 0013
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'  # the runs domain's branch, after the claim epoch
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run_artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('step_id', sa.String(length=64), nullable=True),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'name', name='uq_run_artifacts_run_name')
    )
    with op.batch_alter_table('run_artifacts', schema=None) as batch_op:
        batch_op.create_index('ix_run_artifacts_created_at', ['created_at'], unique=False)
    op.create_table('run_artifact_chunks',
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['run_artifacts.id'], ),
    sa.PrimaryKeyConstraint('artifact_id', 'seq')
    )


def downgrade() -> None:
    op.drop_table('run_artifact_chunks')
    with op.batch_alter_table('run_artifacts', schema=None) as batch_op:
        batch_op.drop_index('ix_run_artifacts_created_at')
    op.drop_table('run_artifacts')
